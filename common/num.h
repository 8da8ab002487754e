/* SPDX-License-Identifier: MIT */
/*
 * num — numbers a person typed (options, KNOB=VALUE, samepage.conf), read
 * whole and checked: strtoul()/atoi() take "abc" for 0, "-1" for a huge
 * number and "12x" for 12, and a pid of 0 means "every process" on the
 * wire, so a typo must never get that far.
 */
#ifndef SAMEPAGE_NUM_H
#define SAMEPAGE_NUM_H

#include <stdint.h>

/* s, all of it, as a decimal integer in [min, max]: 0, -EINVAL (empty, a
 * sign, a space, anything but digits) or -ERANGE (outside [min, max]). */
int sp_parse_u64(const char *s, uint64_t min, uint64_t max, uint64_t *out);
/* s as seconds, a decimal number with at most 3 decimals ("2", "0.5"), in
 * milliseconds within [min_ms, max_ms]: 0, -EINVAL or -ERANGE. */
int sp_parse_secs_ms(const char *s, uint64_t min_ms, uint64_t max_ms, uint64_t *out_ms);

#endif
