/* SPDX-License-Identifier: MIT */
/*
 * conn — talking to the user's daemon, for the library (lib/client.c) and
 * the CLI (cli/samepage.c) alike: dialling its socket, and what a reply
 * means. The library layers its never-give-up waiting on these (DESIGN.md,
 * invariant 5); the CLI, a person at a terminal, waits a few seconds and
 * says so.
 */
#ifndef SAMEPAGE_CONN_H
#define SAMEPAGE_CONN_H

#include <stdint.h>

#include "proto.h"

/* Connect a SOCK_SEQPACKET socket to path; with send and receive timeouts
 * of timeout_s when > 0; non-blocking when nonblock. The fd, or -errno
 * (-EAGAIN: the daemon's backlog is full, it is alive but busy). */
int sp_dial(const char *path, int timeout_s, int nonblock);
/* What reply m to a request that wants reply type want says: 0 (m is it),
 * the daemon's -errno (D_ACK of an error; D_ACK 0 when want is D_ACK), or
 * -EPROTO (malformed, or another type). A descriptor m carried with an
 * error is closed. */
int sp_reply_check(struct sp_msg *m, uint16_t want);
/* Blocking request and reply on fd (its timeouts apply), the reply in
 * buf (SP_MAX_MSG bytes): 0 or -errno as sp_reply_check(). */
int sp_call(int fd, void *buf, uint16_t type, const void *req, uint32_t len, uint16_t want,
	    struct sp_msg *m);
/* Connect to the daemon at path as an observer (the CLI: no memory, not
 * waited for by full scans), with timeouts of timeout_s. The fd or -errno. */
int sp_observe(const char *path, int timeout_s, void *buf);

#endif
