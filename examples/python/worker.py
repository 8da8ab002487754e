#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""One Python interpreter of examples/python.sh: a worker that loads the same
modules and builds the same data as its siblings, the way N copies of one
service (a web app, a model server, a batch job) each load their code and
their lookup tables. It knows nothing of samepage.

    python3 worker.py --mib M --id I [--ksm] [--cow-pages P]

Protocol (one line per step on stdout, "key=value" fields):
  1. import the modules, build M MiB of data, hash it all (sha256):
     "ready ... digest=D"; then wait for SIGUSR1 (meanwhile the pages merge);
  2. hash everything again and compare with D: "check ok|BAD ..."; then write
     8 bytes into P pages of the data (a write to a merged page is a
     copy-on-write: it must change this interpreter's copy only), read them
     back and hash the written buffers against what they must now hold:
     "cow ok|BAD ... digest=D2" (D2 differs per --id, since the bytes
     written carry the id); then wait for SIGUSR1;
  3. hash everything again, with the writes: "final ok|BAD ...", exit 0
     when every check passed, 1 otherwise.

--ksm: call prctl(PR_SET_MEMORY_MERGE, 1) ourselves (through ctypes), so
that kernel KSM merges this interpreter's anonymous memory; under
`samepage run --merge-any` that is done for us, by samepage.

Which data merges, and why (the point of this example):

* Python objects do not: an object starts with its reference count and a
  pointer to its type; the type objects are at the same address in every
  interpreter (Debian builds python3 without PIE), but lists, dicts, tuples,
  frames and code objects point to other objects, which live in pymalloc
  arenas (mmaps) and in the brk heap, both placed at random addresses
  (ASLR), and str objects cache a hash salted per process (PYTHONHASHSEED).
  So the pages of the imported modules differ between interpreters even
  though they were built the same way, and only a few (zero pages, some
  pointer-free pages) merge. (Tried: 3 interpreters with 2 MiB of data
  saved 6.5 MiB; the same under `setarch -R` with PYTHONHASHSEED=0 saved
  48 MiB, almost all of the ~23 MiB of heap of two of them.)

* Large buffers do: the payload of a bytearray, of an array.array, of a
  big bytes or str object is plain content, identical in every interpreter
  when it was computed the same way. A buffer of 128 KiB or more gets its
  own mmap from glibc's malloc, so it starts at the same offset in its page
  in every interpreter and its pages are equal byte for byte (for bytes and
  str the first page also holds the object header, with the type pointer
  and the cached hash, and stays private). That is what we build:
    - blobs: bytearrays of pseudo-random bytes (random.Random, fixed seed),
      the stand-in for a loaded model / image / table of records;
    - table: an array.array('d') of computed doubles;
    - text: str pieces of pseudo-random ASCII words, 1 MiB each.

  glibc adapts its mmap threshold: once a large buffer is freed (here the
  temporary bytes that each text piece is decoded from), requests up to
  that size come from the brk heap, where a buffer starts wherever the
  interpreter's earlier allocations left off. That is the same offset in
  every interpreter only while all of them allocated exactly the same
  sequence before; one allocation 16 bytes longer in one worker shifts all
  its later heap buffers and none of their pages equals the others' (tried:
  with --adaptive-malloc and a 16 * id byte difference, 3 x 48 MiB saved 73
  instead of 96 MiB: the text did not merge). Services that served
  different requests never have the same history, so we fix the threshold
  at 128 KiB (mallopt(M_MMAP_THRESHOLD), which stops the adaptation): every
  buffer of the data set gets its own mapping, page-aligned.
"""
import argparse
import array
import ctypes
import hashlib
import importlib
import math
import os
import random
import signal
import struct
import sys
import time

PAGE = 4096
MIB = 1 << 20
PR_SET_MEMORY_MERGE = 67
M_MMAP_THRESHOLD = -3

# A good part of the standard library, as an application with many
# dependencies imports it. Modules missing from a minimal installation are
# skipped (the same in every interpreter).
MODULES = """
    abc argparse ast asyncio base64 bdb binascii bisect bz2 calendar cmath
    cmd codecs collections collections.abc colorsys compileall concurrent.futures
    configparser contextlib contextvars copy cProfile csv dataclasses datetime
    decimal difflib dis doctest email email.mime.multipart email.mime.text
    email.parser email.policy enum filecmp fnmatch fractions ftplib functools
    getopt gettext glob graphlib gzip hashlib heapq hmac html html.parser
    http.client http.cookiejar http.cookies http.server imaplib importlib.metadata
    importlib.resources inspect io ipaddress itertools json logging
    logging.handlers lzma mailbox mimetypes mmap multiprocessing
    multiprocessing.pool netrc numbers operator optparse pathlib pdb pickle
    pickletools pkgutil platform plistlib poplib pprint profile pstats pydoc
    queue quopri random re reprlib runpy sched secrets selectors shelve shlex
    shutil signal smtplib socket socketserver sqlite3 ssl stat statistics string
    stringprep struct subprocess symtable sysconfig tabnanny tarfile tempfile
    textwrap threading timeit tokenize tomllib trace traceback tracemalloc
    types typing unicodedata unittest unittest.mock urllib.parse urllib.request
    uuid warnings wave weakref wsgiref.simple_server xml.dom.minidom
    xml.etree.ElementTree xml.sax xmlrpc.client xmlrpc.server zipfile zipimport
    zlib zoneinfo
""".split()


def libc():
    return ctypes.CDLL(None, use_errno=True)


def say(*fields):
    print(*fields, flush=True)


def build(mib, seed=20240904):
    """The data set: mib MiB in three parts, the same in every interpreter."""
    rnd = random.Random(seed)
    chunk = MIB
    # blobs: half the data, bytearrays of 1 MiB filled in place in 64 KiB
    # steps (no temporary buffer as large as a blob).
    blobs = []
    for _ in range(max(1, mib // 2)):
        b = bytearray(chunk)
        for off in range(0, chunk, 64 << 10):
            b[off:off + (64 << 10)] = rnd.randbytes(64 << 10)
        blobs.append(b)
    # table: a quarter, doubles computed from their index.
    n = max(1, mib // 4) * MIB // 8
    table = array.array('d', map(math.sin, range(n)))
    # text: the rest, 1 MiB str pieces of lower-case words.
    letters = bytes(range(ord('a'), ord('z') + 1)) + b'    '
    trans = bytes(letters[i % len(letters)] for i in range(256))
    text = []
    for _ in range(max(1, mib - len(blobs) - mib // 4)):
        text.append(rnd.randbytes(chunk).translate(trans).decode('ascii'))
    return blobs, table, text


def digests(blobs, table, text):
    """sha256 of each part, and of everything."""
    parts = {}
    h = hashlib.sha256()
    for b in blobs:
        h.update(b)
    parts['blobs'] = h.hexdigest()
    parts['table'] = hashlib.sha256(memoryview(table).cast('B')).hexdigest()
    h = hashlib.sha256()
    for s in text:
        h.update(s.encode('ascii'))
    parts['text'] = h.hexdigest()
    whole = hashlib.sha256(''.join(parts[k] for k in sorted(parts)).encode())
    return parts, whole.hexdigest()


def cow_plan(blobs, pages, ident):
    """(blob index, offset, 8 bytes) for `pages` pages spread over the blobs."""
    per_blob = len(blobs[0]) // PAGE
    plan = []
    for j in range(pages):
        bi = j % len(blobs)
        pg = (j // len(blobs)) * 7 % per_blob  # spread within the blob
        plan.append((bi, pg * PAGE + 128, struct.pack('<Q', ident << 32 | j)))
    return plan


def expected_blobs_digest(blobs, plan):
    """sha256 of the blobs as they must read after the plan is written,
    computed from the current (unwritten) contents."""
    by_blob = {}
    for bi, off, data in plan:
        by_blob.setdefault(bi, []).append((off, data))
    h = hashlib.sha256()
    for bi, b in enumerate(blobs):
        mv = memoryview(b)
        pos = 0
        for off, data in sorted(by_blob.get(bi, [])):
            h.update(mv[pos:off])
            h.update(data)
            pos = off + len(data)
        h.update(mv[pos:])
    return h.hexdigest()


def wait_usr1():
    signal.sigwait({signal.SIGUSR1})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--mib', type=int, required=True)
    ap.add_argument('--id', type=int, required=True)
    ap.add_argument('--ksm', action='store_true')
    ap.add_argument('--cow-pages', type=int, default=256)
    ap.add_argument('--adaptive-malloc', action='store_true',
                    help='leave glibc\'s adaptive mmap threshold on (to show its effect)')
    a = ap.parse_args()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    c = libc()
    if a.ksm and c.prctl(PR_SET_MEMORY_MERGE, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        say(f'error prctl(PR_SET_MEMORY_MERGE) failed: {os.strerror(err)}')
        return 1
    if not a.adaptive_malloc:
        c.mallopt(M_MMAP_THRESHOLD, 128 << 10)

    t0 = time.monotonic()
    loaded = 0
    for name in MODULES:
        try:
            importlib.import_module(name)
            loaded += 1
        except ImportError:
            pass
    t1 = time.monotonic()
    blobs, table, text = build(a.mib)
    data = sum(map(len, blobs)) + len(table) * 8 + sum(map(len, text))
    parts, digest = digests(blobs, table, text)
    t2 = time.monotonic()
    say(f'ready pid={os.getpid()} modules={loaded} sys_modules={len(sys.modules)} '
        f'data_kib={data // 1024} import_s={t1 - t0:.2f} build_s={t2 - t1:.2f} digest={digest}')

    wait_usr1()
    ok = True
    t0 = time.monotonic()
    parts2, digest2 = digests(blobs, table, text)
    bad = [k for k in parts if parts[k] != parts2[k]]
    ok &= not bad
    say(f'check {"ok" if not bad else "BAD"} digest={digest2} hash_s={time.monotonic() - t0:.2f}'
        + (f' changed={",".join(bad)}' if bad else ''))

    # Copy-on-write: write 8 bytes into `cow_pages` pages of the blobs.
    plan = cow_plan(blobs, a.cow_pages, a.id)
    want = expected_blobs_digest(blobs, plan)
    for bi, off, data in plan:
        blobs[bi][off:off + len(data)] = data
    readback = all(bytes(blobs[bi][off:off + len(data)]) == data for bi, off, data in plan)
    parts3, digest3 = digests(blobs, table, text)
    cow_ok = (readback and parts3['blobs'] == want and parts3['table'] == parts['table']
              and parts3['text'] == parts['text'])
    ok &= cow_ok
    say(f'cow {"ok" if cow_ok else "BAD"} pages={len(plan)} readback={int(readback)} '
        f'digest={digest3}')

    wait_usr1()
    parts4, digest4 = digests(blobs, table, text)
    final_ok = parts4 == parts3
    ok &= final_ok
    say(f'final {"ok" if final_ok else "BAD"} digest={digest4}')
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
