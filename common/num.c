/* SPDX-License-Identifier: MIT */
/* num — see num.h. */
#define _GNU_SOURCE
#include "num.h"

#include <errno.h>
#include <string.h>

/* Leading digits of s as a number, without strtoull's leniency (spaces,
 * signs, and "-1" wrapping around): how many digits, or -ERANGE past
 * UINT64_MAX. */
static int digits(const char *s, uint64_t *v)
{
	int n = 0;

	*v = 0;
	for (; s[n] >= '0' && s[n] <= '9'; n++) {
		unsigned d = (unsigned)(s[n] - '0');
		if (*v > (UINT64_MAX - d) / 10)
			return -ERANGE;
		*v = *v * 10 + d;
	}
	return n;
}

int sp_parse_u64(const char *s, uint64_t min, uint64_t max, uint64_t *out)
{
	uint64_t v;
	int n = s ? digits(s, &v) : 0;

	if (n < 0)
		return n;
	if (n == 0 || s[n])
		return -EINVAL;
	if (v < min || v > max)
		return -ERANGE;
	*out = v;
	return 0;
}

int sp_parse_secs_ms(const char *s, uint64_t min_ms, uint64_t max_ms, uint64_t *out_ms)
{
	uint64_t whole, frac = 0;
	int n = s ? digits(s, &whole) : 0, f = 0;

	if (n < 0)
		return n;
	if (n == 0)
		return -EINVAL;
	if (s[n] == '.') {
		const char *p = s + n + 1;
		for (; p[f] >= '0' && p[f] <= '9'; f++)
			if (f < 3)
				frac = frac * 10 + (uint64_t)(p[f] - '0');
		if (f == 0 || f > 3 || p[f])
			return -EINVAL;
		for (int i = f; i < 3; i++)
			frac *= 10;
	} else if (s[n]) {
		return -EINVAL;
	}
	if (whole > (UINT64_MAX - frac) / 1000)
		return -ERANGE;
	whole = whole * 1000 + frac;
	if (whole < min_ms || whole > max_ms)
		return -ERANGE;
	*out_ms = whole;
	return 0;
}
