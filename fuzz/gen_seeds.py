#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Write the seed conversations of fuzz/daemon_msg.c into fuzz/corpus/daemon_msg.

Each seed is one input in daemon_msg.c's encoding (see the comments there):
a byte for the number of connections, then operations, each a byte
(slot << 5 | what) and its arguments. Every message ends with the two
bytes deliver() reads: fdopt (0: no descriptor; 1: the message's usual one)
and mut (0: not corrupted). The seeds are valid conversations as the
library holds them: HELLO, then BUDGET, LOOKUP, PIPE, CREATE, HINTS, UNREF,
COW, GETSEG, STAT, SET, FORK, MARKER. DAEMON_MSG_TRACE=1 with a seed as
argument to the fuzzer prints what the daemon answered.

Run from anywhere: python3 fuzz/gen_seeds.py
"""
import os

# op codes (daemon_msg.c, run())
RAW, HELLO, BUDGET, LOOKUP, CREATE, UNREF, GETSEG, FORK, STAT, SET, UNMERGE, PIPE, \
    HINTS, COW, MARKER, PAGES, PIPE_BYTES, TICK, SWEEP, HANGUP, RECONNECT = range(21)
MAPTOGGLE = 30

NONE, USUAL = 0, 1  # fdopt


def op(slot, what):
    return bytes([slot << 5 | what])


def trailer(fdopt=NONE, extra=b""):
    return bytes([fdopt, 0]) + extra


def hello(slot, marker=None, fresh=True, forked=False, expect=False, observer=False,
          domain=0):
    b = (1 if observer else 0) | (2 if forked else 0) | (0x10 if expect else 0)
    if domain:
        b |= 0x04 | (0x08 if domain == 2 else 0)
    out = op(slot, HELLO) + bytes([b])
    if marker is None:
        return out + trailer()
    return out + bytes([0x01 | (0x10 if fresh else 0), 0, marker])


def budget(slot, done=False, want_log2=9):
    # mergeable, pass_gen = current generation, want = 2^want_log2
    b = 0x20 | 0x04 | (1 if done else 0)
    return op(slot, BUDGET) + bytes([b, 0x20 | want_log2]) + trailer()


def lookup(slot, ents):
    """ents: (pattern, page number < 0xf0)"""
    out = op(slot, LOOKUP) + bytes([len(ents)])
    for pat, addr in ents:
        out += bytes([pat, addr])
    return out + trailer()


def lookup_seeded(slot, seed, spread, n16, full=False):
    return op(slot, LOOKUP) + bytes([0x80 | (0x40 if full else 0), seed, spread, n16]) + trailer()


def pipe(slot, pages_code=6):
    # pages_code < 0x40: claim[code % 8] = 0, 1, 16, 64, 128, 255, 256, 257
    return op(slot, PIPE) + bytes([pages_code]) + trailer(USUAL)


def create(slot, ents, put=0):
    """ents: (index in the last lookup or 0xff for none, pattern)"""
    out = op(slot, CREATE) + bytes([len(ents)])
    for look, pat in ents:
        out += bytes([look, pat])
    return out + bytes([put]) + trailer()


def create_seeded(slot, seed, spread, n, put=0):
    return op(slot, CREATE) + bytes([0x80, seed, spread, n - 1, put]) + trailer()


def ids(slot, what, picks, cowed=False):
    """picks: indexes into the ids the connection got (< 0xc0)"""
    out = op(slot, what) + bytes([len(picks) | (0x40 if cowed else 0)]) + bytes(picks)
    return out + trailer()


def getseg(slot, seg=0):
    return op(slot, GETSEG) + bytes([seg if seg < 3 else 0xf0]) + trailer()


def hints(slot, mx=64):
    return op(slot, HINTS) + bytes([mx]) + trailer()


def stat(slot, pid_of=None):
    return op(slot, STAT) + bytes([0 if pid_of is None else 0x81 + pid_of]) + trailer()


def set_knob(slot, knob, value_byte):
    return op(slot, SET) + bytes([knob, value_byte]) + trailer()


def fork(slot, marker):
    return op(slot, FORK) + bytes([0]) + bytes([0x11, 0, marker])


def new_marker(slot, marker):
    return op(slot, MARKER) + bytes([0]) + bytes([0x11, 0, marker])


def unmerge(slot, all_=True):
    return op(slot, UNMERGE) + bytes([0 if all_ else 0x81]) + trailer()


def tick(sweep=False):
    return op(0, SWEEP if sweep else TICK)


def hangup(slot):
    return op(slot, HANGUP)


def reconnect(slot):
    return op(slot, RECONNECT)


def map_marker(m):
    return op(0, MAPTOGGLE) + bytes([m])


seeds = {}

# One process: the plain requests.
seeds["basic"] = (bytes([0]) + hello(0) + budget(0) + stat(0) + stat(0, pid_of=0) +
                  set_knob(0, 1, 0x2c) + set_knob(0, 4, 0x03) + getseg(0, seg=0xffff) +
                  hints(0) + budget(0, done=True) + tick())

# Two processes with equal pages: unstable match, create, hint, stable hits,
# unref and cow, segment fetch.
seeds["merge_two"] = (
    bytes([1]) + hello(0) + hello(1) + budget(0) + budget(1) +
    lookup(0, [(1, 0), (2, 1), (3, 2), (0, 3)]) +
    lookup(1, [(1, 0), (2, 1), (4, 2)]) +
    pipe(1) + create(1, [(0, 1), (1, 2)]) +
    budget(0) + hints(0) + lookup(0, [(1, 0), (2, 1)]) +
    getseg(1) + ids(0, COW, [0]) + ids(0, UNREF, [0, 1], cowed=True) +
    ids(1, UNREF, [0, 1]) + stat(0) + budget(0, done=True) + budget(1, done=True) + tick())

# A hint claimed by a lookup of the hinted page before C_HINTS.
seeds["hint_claim"] = (
    bytes([1]) + hello(0) + hello(1) + lookup(0, [(7, 5)]) + lookup(1, [(7, 9)]) +
    pipe(1) + create(1, [(0, 7)]) + lookup(0, [(7, 5)]) + hints(0) + budget(0) +
    pipe(0) + lookup(0, [(8, 6)]) + lookup(1, [(8, 6)]) + create(1, [(0, 8)]) +
    create(0, [(0, 8)]) + hints(0) + ids(0, UNREF, [0, 1, 2]))

# Big requests: 4096 lookups, 256 creates through a 1 MiB pipe.
seeds["big"] = (
    bytes([1]) + hello(0) + hello(1) + pipe(1) + lookup_seeded(0, 10, 200, 0, full=True) +
    lookup_seeded(1, 10, 200, 15) + create_seeded(1, 10, 200, 200) + budget(0) +
    hints(0, 0xef) + getseg(0) + stat(0))

# Fork: the parent hands its references to a marker, the child says hello
# with it (attached, or parked until the tick when it comes first).
seeds["fork"] = (
    bytes([2]) + hello(0, marker=0) + hello(1) + lookup(0, [(3, 1)]) + lookup(1, [(3, 2)]) +
    pipe(1) + create(1, [(0, 3)]) +
    fork(0, 1) + hello(2, marker=1, fresh=False, forked=True, expect=True) +
    new_marker(2, 2) + budget(2) + hangup(0) + tick(sweep=True) + stat(2) + hangup(2) +
    tick(sweep=True))
seeds["fork_parked"] = (
    bytes([2]) + hello(0, marker=0) + hello(1) + lookup(0, [(5, 1)]) + lookup(1, [(5, 1)]) +
    pipe(1) + create(1, [(0, 5)]) + hello(2, marker=1, forked=True, expect=True) +
    budget(2) + fork(0, 1) + tick() + budget(2) + hints(0) + tick(sweep=True))

# A process that maps its marker: its set outlives the connection and
# comes back when it connects again with the same marker.
seeds["held"] = (
    bytes([1]) + hello(0, marker=0) + map_marker(0) + hello(1) + lookup(0, [(9, 1)]) +
    lookup(1, [(9, 1)]) + pipe(1) + create(1, [(0, 9)]) + hangup(0) + tick(sweep=True) +
    reconnect(0) + hello(0, marker=0, fresh=False) + budget(0) + hints(0) + map_marker(0) +
    tick(sweep=True) + stat(1))

# Zero pages, domains, an observer, unmerge and run=2.
seeds["domains"] = (
    bytes([2]) + hello(0, domain=1) + hello(1, domain=2) + hello(2, observer=True) +
    lookup(0, [(0, 1), (4, 2)]) + lookup(1, [(0, 1), (4, 2)]) + pipe(0) + pipe(1) +
    create(1, [(0, 0), (1, 4)]) + stat(2) + unmerge(2) + set_knob(2, 0, 0x02) +
    budget(0) + budget(1) + getseg(0) + getseg(1) + set_knob(2, 0, 0x01))

# Wrong things the daemon must survive: a short pipe, a page whose bytes
# do not match, an unref of what it does not hold, a reply type.
seeds["bad"] = (
    bytes([2]) + hello(0) + hello(1) + pipe(0, 2) + lookup(0, [(1, 1)]) +
    create(0, [(0, 1), (0xff, 2)], put=2) + reconnect(0) + hello(0) + pipe(0) +
    op(0, CREATE) + bytes([0x21, 0, 6, 0, 0, 0, 0]) +
    ids(1, UNREF, [0xf0, 0xf1]) + ids(1, COW, [0xf2]) +
    op(2, RAW) + bytes([14, 16, 0]) + bytes(16) + trailer() +
    op(1, RAW) + bytes([1, 3, 0]) + bytes(3) + trailer())

# A hinted page that changed before its process offered it again; a budget
# bucket refilled at once (sleep_millisecs 0).
seeds["hint_changed"] = (
    bytes([1]) + hello(0) + hello(1) + lookup(0, [(7, 5)]) + lookup(1, [(7, 9)]) +
    pipe(1) + create(1, [(0, 7)]) + lookup(0, [(8, 5)]) + pipe(0) + create(0, [(0, 8)]) +
    hints(0) + set_knob(1, 2, 0x00) + budget(0) + budget(1) + set_knob(1, 2, 0x14))

here = os.path.dirname(os.path.abspath(__file__))
out = os.path.join(here, "corpus", "daemon_msg")
os.makedirs(out, exist_ok=True)
for name, data in seeds.items():
    with open(os.path.join(out, "seed-" + name), "wb") as f:
        f.write(data)
print("wrote %d seeds to %s" % (len(seeds), out))
