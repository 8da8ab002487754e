/* SPDX-License-Identifier: MIT */
/*
 * sizes — the few sizes every part of samepage agrees on: the page, and the
 * pool's segments (a pool page id is segment * SP_SEG_PAGES + index, in
 * the daemon, on the wire and in the library alike).
 */
#ifndef SAMEPAGE_SIZES_H
#define SAMEPAGE_SIZES_H

#define SP_PAGE 4096u
/* 256 MiB a segment: a process maps a run of consecutive pool pages with
 * one VMA, and runs cannot cross segments, so merging 2 x 512 MiB costs a
 * handful of VMAs (with 32 MiB segments: dozens). Unused parts of a
 * segment cost nothing (MAP_NORESERVE window, pages allocated on write). */
#define SP_SEG_PAGES 65536u
#define SP_MAX_SEGS 4096u    /* 1 TiB of pool at most */

#endif
