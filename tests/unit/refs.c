/* SPDX-License-Identifier: MIT */
/*
 * Unit test of daemon/refs.h, a connection's pool references. Proves, with a
 * 300k-operation randomized differential test against a plain array of
 * counts (ids drawn from three segments, clustered as real merges are, with
 * repeats so extra references beyond the first are common):
 *  - refs_add / refs_drop / refs_count agree with the reference at every id;
 *  - dropping a reference not held is -ENOENT and changes nothing;
 *  - iteration visits every held id exactly once, in no particular order,
 *    with its full count, and nothing else; total is the sum;
 *  - a segment's bitmap is freed when its last reference goes (bytes fall
 *    back to what an empty set holds), and refs_fini releases everything.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../lib/testutil.h"
#include "pool.h"
#include "refs.h"

#define SPAN 3000u /* ids used per segment */
static const uint32_t segbase[3] = { 0, 7 * SP_SEG_PAGES, 4095u * SP_SEG_PAGES };
static uint32_t want[3 * SPAN];
static uint64_t rng = 0xC0FFEE1234567ull;

static uint64_t rnd(void)
{
	return tu_xorshift(&rng);
}

static uint32_t id_of(uint32_t k)
{
	return segbase[k / SPAN] + (k % SPAN) * 7 % SP_SEG_PAGES;
}

static void check_all(const struct refs *r)
{
	static uint8_t seen[3 * SPAN];
	uint64_t pos = 0, total = 0, sum = 0;
	uint32_t id, n;

	memset(seen, 0, sizeof(seen));
	for (uint32_t k = 0; k < 3 * SPAN; k++) {
		TU_CHECK(refs_count(r, id_of(k)) == want[k], "count of %u: %u, want %u", id_of(k),
			 refs_count(r, id_of(k)), want[k]);
		sum += want[k];
	}
	while (refs_next(r, &pos, &id, &n)) {
		uint32_t k = UINT32_MAX;
		for (uint32_t s = 0; s < 3; s++)
			if (id >= segbase[s] && id < segbase[s] + SP_SEG_PAGES &&
			    (id - segbase[s]) % 7 == 0 && (id - segbase[s]) / 7 < SPAN)
				k = s * SPAN + (id - segbase[s]) / 7;
		TU_CHECK(k != UINT32_MAX, "iteration gave id %u never added", id);
		TU_CHECK(!seen[k]++, "iteration gave id %u twice", id);
		TU_CHECK(n == want[k] && n > 0, "iteration count of %u: %u, want %u", id, n, want[k]);
		total += n;
	}
	for (uint32_t k = 0; k < 3 * SPAN; k++)
		TU_CHECK(seen[k] == (want[k] > 0), "iteration missed id %u", id_of(k));
	TU_CHECK(total == sum && r->total == sum, "total %llu / %llu, want %llu",
		 (unsigned long long)total, (unsigned long long)r->total, (unsigned long long)sum);
}

int main(void)
{
	struct refs r;
	size_t empty;

	refs_init(&r);
	empty = refs_bytes(&r);
	TU_CHECK(refs_drop(&r, 5) == -ENOENT, "drop from an empty set");
	for (int op = 0; op < 300000; op++) {
		/* clustered: a window of ids that drifts */
		uint32_t k = (uint32_t)((op / 50 + rnd() % 64) % (3 * SPAN));
		if (rnd() % 100 < 55) {
			TU_CHECK(refs_add(&r, id_of(k)) == 0, "add");
			want[k]++;
		} else {
			int err = refs_drop(&r, id_of(k));
			TU_CHECK(err == (want[k] ? 0 : -ENOENT), "drop %u: %d with %u held", id_of(k),
				 err, want[k]);
			if (want[k])
				want[k]--;
		}
		if (op % 20000 == 0)
			check_all(&r);
	}
	check_all(&r);
	for (uint32_t k = 0; k < 3 * SPAN; k++)
		while (want[k]) {
			TU_CHECK(refs_drop(&r, id_of(k)) == 0, "drop all");
			want[k]--;
		}
	check_all(&r);
	TU_CHECK(r.segs.count == 0, "%zu segment bitmaps left when nothing is held", r.segs.count);
	TU_CHECK(r.extra.count == 0, "%zu extra counts left", r.extra.count);
	/* only the (emptied) maps' tables remain, no bitmap */
	TU_CHECK(refs_bytes(&r) == empty + map_bytes(&r.segs) + map_bytes(&r.extra),
		 "bytes %zu after emptying", refs_bytes(&r));
	refs_fini(&r);
	printf("refs: 300000 operations agree with the reference; empty set freed\n");
	return 0;
}
