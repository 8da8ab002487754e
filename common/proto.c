/* SPDX-License-Identifier: MIT */
/* proto — framing, fd passing and payload validation; see proto.h. */
#define _GNU_SOURCE
#include "proto.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>
#include <xxhash.h>

#include "num.h"
#include "os.h"

int sp_sendv(int sock, uint16_t type, const void *a, uint32_t alen,
	     const void *b, uint32_t blen)
{
	return sp_sendv_flags(sock, type, a, alen, b, blen, 0);
}

int sp_sendv_flags(int sock, uint16_t type, const void *a, uint32_t alen,
		   const void *b, uint32_t blen, int flags)
{
	struct sp_hdr h = { .type = type, .len = alen + blen };
	struct iovec iov[3] = {
		{ &h, sizeof(h) }, { (void *)a, alen }, { (void *)b, blen },
	};
	struct msghdr mh = { .msg_iov = iov, .msg_iovlen = 3 };
	ssize_t n;

	if ((uint64_t)alen + blen + sizeof(h) > SP_MAX_MSG)
		return -EMSGSIZE;
	do
		n = sendmsg(sock, &mh, MSG_NOSIGNAL | flags);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return -errno;
	return (size_t)n == sizeof(h) + alen + blen ? 0 : -EPROTO;
}

int sp_send(int sock, uint16_t type, const void *payload, uint32_t len, int fd)
{
	return sp_sendmsg(sock, type, payload, len, fd, 0);
}

int sp_sendmsg(int sock, uint16_t type, const void *payload, uint32_t len, int fd, int flags)
{
	struct sp_hdr h = { .type = type, .len = len };
	struct iovec iov[2] = { { &h, sizeof(h) }, { (void *)payload, len } };
	union { char buf[CMSG_SPACE(sizeof(int))]; struct cmsghdr align; } c;
	struct msghdr mh = { .msg_iov = iov, .msg_iovlen = 2 };
	ssize_t n;

	if (len + sizeof(h) > SP_MAX_MSG)
		return -EMSGSIZE;
	if (fd >= 0) {
		memset(&c, 0, sizeof(c));
		mh.msg_control = c.buf;
		mh.msg_controllen = sizeof(c.buf);
		struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
		cm->cmsg_level = SOL_SOCKET;
		cm->cmsg_type = SCM_RIGHTS;
		cm->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(cm), &fd, sizeof(int));
	}
	do
		n = sendmsg(sock, &mh, MSG_NOSIGNAL | flags);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return -errno;
	return (size_t)n == sizeof(h) + len ? 0 : -EPROTO;
}

/* Take what the ancillary data carries: exactly one descriptor (any
 * other number is closed, so a hostile peer cannot fill our descriptor
 * table) and the sender's kernel-checked credentials. */
static int take_cmsgs(struct msghdr *mh, struct sp_msg *m)
{
	int nfds = 0;

	for (struct cmsghdr *cm = CMSG_FIRSTHDR(mh); cm; cm = CMSG_NXTHDR(mh, cm)) {
		if (cm->cmsg_level != SOL_SOCKET)
			continue;
		if (cm->cmsg_type == SCM_CREDENTIALS && cm->cmsg_len == CMSG_LEN(sizeof(struct ucred))) {
			struct ucred cr;
			memcpy(&cr, CMSG_DATA(cm), sizeof(cr));
			m->pid = cr.pid;
			m->uid = cr.uid;
			continue;
		}
		if (cm->cmsg_type != SCM_RIGHTS)
			continue;
		size_t n = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		for (size_t i = 0; i < n; i++) {
			int fd;
			memcpy(&fd, CMSG_DATA(cm) + i * sizeof(int), sizeof(int));
			if (nfds++ == 0)
				m->fd = fd;
			else
				raw_close(fd);
		}
	}
	if (nfds > 1 && m->fd >= 0) {
		raw_close(m->fd);
		m->fd = -1;
	}
	return nfds > 1 ? -EPROTO : 0; /* no message carries more than one */
}

int sp_recv(int sock, void *buf, struct sp_msg *m)
{
	union {
		char buf[CMSG_SPACE(4 * sizeof(int)) + CMSG_SPACE(sizeof(struct ucred))];
		struct cmsghdr align;
	} c;
	struct iovec iov = { buf, SP_MAX_MSG };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1,
			     .msg_control = c.buf, .msg_controllen = sizeof(c.buf) };
	ssize_t n;

	m->fd = -1;
	m->pid = 0;
	m->uid = (uid_t)-1;
	do
		n = recvmsg(sock, &mh, MSG_CMSG_CLOEXEC);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return -errno;
	if (n == 0)
		return -ECONNRESET;
	if (take_cmsgs(&mh, m) || (mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) ||
	    (size_t)n < sizeof(m->h))
		goto bad;
	memcpy(&m->h, buf, sizeof(m->h));
	if (m->h.len != (size_t)n - sizeof(m->h))
		goto bad;
	m->p = (unsigned char *)buf + sizeof(m->h);
	if (m->fd >= 0 && m->h.type != D_SEG && m->h.type != C_PIPE && m->h.type != C_HELLO &&
	    m->h.type != C_FORK && m->h.type != C_MARKER) {
		raw_close(m->fd); /* only these carry a descriptor */
		m->fd = -1;
	}
	return 0;
bad:
	if (m->fd >= 0)
		raw_close(m->fd);
	m->fd = -1;
	return -EPROTO;
}

/* Fixed size of each message's payload, or of its fixed part for counted
 * ones (elem != 0). */
static int layout(uint16_t type, size_t *fixed, size_t *elem)
{
	*elem = 0;
	switch (type) {
	case C_HELLO: *fixed = sizeof(struct sp_hello); break;
	case C_BUDGET: *fixed = sizeof(struct sp_budget); break;
	case C_LOOKUP: *fixed = sizeof(struct sp_lookup); *elem = sizeof(struct sp_lookup_ent); break;
	case C_CREATE: *fixed = sizeof(struct sp_create); *elem = sizeof(struct sp_create_ent); break;
	case C_PIPE: *fixed = sizeof(struct sp_pipe); break;
	case C_HINTS: *fixed = sizeof(struct sp_hints_req); break;
	case D_HINTS: *fixed = sizeof(struct sp_hints); *elem = sizeof(struct sp_hint); break;
	case C_UNREF: case C_COW: case D_LOOKUP: case D_CREATE: case C_MOVE: case D_MOVE:
		*fixed = sizeof(struct sp_ids); *elem = 4; break;
	case C_GETSEG: *fixed = sizeof(struct sp_getseg); break;
	case C_FORK: case C_MARKER: *fixed = sizeof(struct sp_fork); break;
	case C_STAT: *fixed = sizeof(struct sp_statreq); break;
	case C_SET: *fixed = sizeof(struct sp_set); break;
	case C_UNMERGE: *fixed = sizeof(struct sp_unmerge); break;
	case D_HELLO: *fixed = sizeof(struct sp_hello_r); break;
	case D_BUDGET: *fixed = sizeof(struct sp_budget_r); break;
	case D_SEG: *fixed = sizeof(struct sp_seg_r); break;
	case D_ACK: *fixed = sizeof(struct sp_ack); break;
	case D_STAT: *fixed = sizeof(struct sp_stat_r); break;
	case C_PROCS: *fixed = sizeof(struct sp_procs_req); break;
	case C_FILL: *fixed = sizeof(struct sp_fill); break;
	case D_PROCS: *fixed = sizeof(struct sp_procs); *elem = sizeof(struct sp_proc_ent); break;
	default: return -EPROTO;
	}
	return 0;
}

static uint32_t max_count(uint16_t type)
{
	switch (type) {
	case C_LOOKUP: case D_LOOKUP: return SP_MAX_LOOKUP;
	case C_CREATE: case D_CREATE: return SP_MAX_CREATE;
	case D_HINTS: return SP_MAX_HINTS;
	case C_MOVE: case D_MOVE: return SP_MAX_MOVE;
	case D_PROCS: return SP_MAX_PROCS;
	default: return SP_MAX_UNREF;
	}
}

int sp_validate(const struct sp_msg *m)
{
	size_t fixed, elem;
	uint32_t n;

	if (layout(m->h.type, &fixed, &elem) < 0 || m->h.len < fixed)
		return -EPROTO;
	if (!elem)
		return m->h.len == fixed ? 0 : -EPROTO;
	memcpy(&n, m->p, sizeof(n)); /* every counted payload starts with n */
	if (n > max_count(m->h.type))
		return -EPROTO;
	return m->h.len == fixed + (size_t)n * elem ? 0 : -EPROTO;
}

static const char *const knob_names[KNOB_COUNT] = {
	"run", "pages_to_scan", "sleep_millisecs", "use_zero_pages", "max_page_sharing",
	"smart_scan", "advisor_mode", "advisor_max_cpu", "advisor_min_pages_to_scan",
	"advisor_max_pages_to_scan", "advisor_target_scan_time",
};

static const char *const advisor_names[] = { [ADVISOR_NONE] = "none",
					     [ADVISOR_SCAN_TIME] = "scan-time" };
#define NADVISORS (sizeof(advisor_names) / sizeof(advisor_names[0]))

int sp_knob_rank(int knob)
{
	switch (knob) {
	case KNOB_ADVISOR_MAX_CPU: case KNOB_ADVISOR_MIN_PAGES_TO_SCAN:
	case KNOB_ADVISOR_MAX_PAGES_TO_SCAN: case KNOB_ADVISOR_TARGET_SCAN_TIME:
		return 0;
	case KNOB_ADVISOR_MODE:
		return 1;
	default:
		return 2;
	}
}
const char *sp_knob_name(int knob)
{
	return knob >= 0 && knob < KNOB_COUNT ? knob_names[knob] : NULL;
}

int sp_knob_lookup(const char *name)
{
	for (int i = 0; i < KNOB_COUNT; i++)
		if (!strcmp(name, knob_names[i]))
			return i;
	return -ENOENT;
}

/* The kernel refuses max_page_sharing 0 and 1 too: a page shared by one
 * mapper saves nothing. The advisor's page counts are pages_to_scan's
 * range, since they become pages_to_scan; its CPU share is a percentage of
 * one CPU over all scanners, so more than 100 means more than one core
 * (the kernel takes any number for both, and 0). */
static const struct { uint64_t min, max; } knob_ranges[KNOB_COUNT] = {
	[KNOB_RUN] = { 0, 2 },
	[KNOB_PAGES_TO_SCAN] = { 1, 1u << 24 },
	[KNOB_SLEEP_MILLISECS] = { 0, 60000 },
	[KNOB_USE_ZERO_PAGES] = { 0, 1 },
	[KNOB_MAX_PAGE_SHARING] = { 2, 1u << 20 },
	[KNOB_SMART_SCAN] = { 0, 1 },
	[KNOB_ADVISOR_MODE] = { ADVISOR_NONE, ADVISOR_SCAN_TIME },
	[KNOB_ADVISOR_MAX_CPU] = { 0, UINT32_MAX },
	[KNOB_ADVISOR_MIN_PAGES_TO_SCAN] = { 1, 1u << 24 },
	[KNOB_ADVISOR_MAX_PAGES_TO_SCAN] = { 1, 1u << 24 },
	[KNOB_ADVISOR_TARGET_SCAN_TIME] = { 1, UINT32_MAX }, /* seconds */
};

int sp_knob_range(int knob, uint64_t *min, uint64_t *max)
{
	if (knob < 0 || knob >= KNOB_COUNT)
		return -EINVAL;
	*min = knob_ranges[knob].min;
	*max = knob_ranges[knob].max;
	return 0;
}

int sp_knob_check(int knob, uint64_t v)
{
	uint64_t min, max;

	if (sp_knob_range(knob, &min, &max))
		return -EINVAL;
	return v >= min && v <= max ? 0 : -EINVAL;
}

int sp_knob_parse(int knob, const char *text, uint64_t *value)
{
	uint64_t min, max;

	if (sp_knob_range(knob, &min, &max))
		return -EINVAL;
	if (knob != KNOB_ADVISOR_MODE)
		return sp_parse_u64(text, min, max, value);
	for (size_t i = 0; i < NADVISORS; i++)
		if (!strcmp(text, advisor_names[i])) {
			*value = i;
			return 0;
		}
	return -EINVAL;
}

int sp_knob_format(int knob, uint32_t value, char *buf, size_t len)
{
	if (knob == KNOB_ADVISOR_MODE && value < NADVISORS)
		return snprintf(buf, len, "%s", advisor_names[value]);
	return snprintf(buf, len, "%u", value);
}

void sp_knob_takes(int knob, char *buf, size_t len)
{
	uint64_t min = 0, max = 0;

	if (knob == KNOB_ADVISOR_MODE) {
		snprintf(buf, len, "%s or %s", advisor_names[ADVISOR_NONE],
			 advisor_names[ADVISOR_SCAN_TIME]);
		return;
	}
	sp_knob_range(knob, &min, &max);
	snprintf(buf, len, "%llu to %llu", (unsigned long long)min, (unsigned long long)max);
}

uint64_t sp_domain_id(const char *name)
{
	/* 0 is the default domain; any name, even one hashing to 0, is not. */
	return name && *name ? XXH3_64bits(name, strlen(name)) | 1 : 0;
}
