/* SPDX-License-Identifier: MIT */
/*
 * Unit test of daemon/map.h (open addressing, linear probing, backward-shift
 * deletion). Proves:
 *  - insert / get / overwrite / delete, and that an absent key is absent;
 *  - deleting inside a probe run (forced with keys that share a home slot,
 *    found by brute force against the map's own capacity) keeps every other
 *    member of the run reachable, including runs that wrap past the end of
 *    the table: the backward shift is correct;
 *  - growth through many resizes keeps every key and value;
 *  - the key UINT64_MAX (the map's empty marker) is an ordinary key, distinct
 *    from UINT64_MAX - 1, and iteration reports it as itself;
 *  - iteration visits every key exactly once, with its value;
 *  - map_clear empties the map and leaves it usable;
 *  - a 200k-operation randomized differential test against a brute-force
 *    reference (sorted array), with small key ranges so probe runs are long
 *    and deletions shift often, checked in full at intervals.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../lib/testutil.h"
#include "map.h"

static uint64_t rng = 0x243F6A8885A308D3ull;

static uint64_t rnd(void)
{
	return tu_xorshift(&rng);
}

/* The map's slot function, reproduced so tests can build collisions. It is
 * only used to choose keys; every assertion is on the public interface, and
 * if the map's hash changes the targeted runs merely become random ones. The
 * run check below verifies that the chosen keys really did collide. */
static size_t home_of(uint64_t key, size_t cap)
{
	key ^= key >> 33;
	key *= 0xff51afd7ed558ccdULL;
	key ^= key >> 33;
	return (size_t)key & (cap - 1);
}

static void check_get(const struct map *m, uint64_t key, int present, uint64_t val)
{
	uint64_t *v = map_get(m, key);

	if (!present) {
		TU_CHECK(!v, "key %#llx should be absent", (unsigned long long)key);
		return;
	}
	TU_CHECK(v, "key %#llx should be present", (unsigned long long)key);
	TU_CHECK(*v == val, "key %#llx: value %llu, want %llu", (unsigned long long)key,
		 (unsigned long long)*v, (unsigned long long)val);
}

static void test_basic(void)
{
	struct map m;

	map_init(&m);
	TU_CHECK(m.count == 0 && m.cap == 0, "fresh map not empty");
	TU_CHECK(!map_get(&m, 0) && !map_get(&m, 42), "get on an empty map");
	TU_CHECK(map_del(&m, 42) == 0, "del on an empty map");
	TU_CHECK(map_bytes(&m) == 0, "empty map holds bytes");

	TU_CHECK(map_put(&m, 0, 100) == 0, "put 0");
	TU_CHECK(map_put(&m, 1, 101) == 0, "put 1");
	TU_CHECK(map_put(&m, 12345, 7) == 0, "put 12345");
	TU_CHECK(m.count == 3, "count %zu after 3 puts", m.count);
	TU_CHECK(map_bytes(&m) >= 3 * 2 * sizeof(uint64_t), "map_bytes %zu", map_bytes(&m));
	check_get(&m, 0, 1, 100);
	check_get(&m, 1, 1, 101);
	check_get(&m, 12345, 1, 7);
	check_get(&m, 2, 0, 0);

	/* Overwrite keeps the count. */
	TU_CHECK(map_put(&m, 1, 999) == 0, "overwrite");
	TU_CHECK(m.count == 3, "overwrite changed count to %zu", m.count);
	check_get(&m, 1, 1, 999);
	/* Through the returned pointer. */
	*map_get(&m, 0) = 55;
	check_get(&m, 0, 1, 55);

	TU_CHECK(map_del(&m, 1) == 1, "del present key");
	TU_CHECK(map_del(&m, 1) == 0, "del the same key twice");
	TU_CHECK(map_del(&m, 777) == 0, "del absent key");
	TU_CHECK(m.count == 2, "count %zu after delete", m.count);
	check_get(&m, 1, 0, 0);
	check_get(&m, 0, 1, 55);
	check_get(&m, 12345, 1, 7);

	/* Values may be anything, including the empty marker. */
	TU_CHECK(map_put(&m, 5, UINT64_MAX) == 0, "put value UINT64_MAX");
	check_get(&m, 5, 1, UINT64_MAX);
	map_fini(&m);
	TU_CHECK(m.count == 0 && m.cap == 0 && !map_get(&m, 0), "fini leaves an empty map");
	map_fini(&m); /* twice is harmless */
}

/* Keys whose home slot is `home` for capacity cap, the first n found. */
static void keys_with_home(uint64_t *out, int n, size_t home, size_t cap, uint64_t start)
{
	int k = 0;

	for (uint64_t key = start; k < n; key++)
		if (home_of(key, cap) == home)
			out[k++] = key;
}

/* Delete from the middle of probe runs, at the run head, at the tail, in
 * runs that wrap around the table's end, and in two interleaved runs (one
 * home slot right after another) where a shift must skip members whose home
 * is past the hole. */
static void test_probe_runs(void)
{
	enum { CAP = 64, N = 6 };
	uint64_t a[N], b[N], w[N];

	/* A map of capacity 64 holds at most 31 keys without growing. */
	for (int victim = 0; victim < N; victim++) {
		for (int order = 0; order < 2; order++) {
			struct map m;

			map_init(&m);
			keys_with_home(a, N, 10, CAP, 1000);
			keys_with_home(b, N, 11, CAP, 5000);
			keys_with_home(w, N, CAP - 2, CAP, 9000); /* wraps to 0.. */
			for (int i = 0; i < N; i++) {
				/* order 1 interleaves the two runs' insertions */
				if (order) {
					TU_CHECK(!map_put(&m, a[i], a[i] * 3), "put");
					TU_CHECK(!map_put(&m, b[i], b[i] * 3), "put");
				} else {
					TU_CHECK(!map_put(&m, a[i], a[i] * 3), "put");
				}
				TU_CHECK(!map_put(&m, w[i], w[i] * 3), "put");
			}
			if (!order)
				for (int i = 0; i < N; i++)
					TU_CHECK(!map_put(&m, b[i], b[i] * 3), "put");
			TU_CHECK(m.cap == CAP, "map grew to %zu: test assumes %u", m.cap, CAP);
			/* The keys really collide: run of 12 starting at 10, so the
			 * slots 10..21 are all full. */
			for (size_t s = 10; s < 22; s++)
				TU_CHECK(m.keys[s] != MAP_EMPTY, "slot %zu empty: no probe run", s);
			for (size_t s = CAP - 2; s < CAP + N - 2; s++)
				TU_CHECK(m.keys[s % CAP] != MAP_EMPTY, "slot %zu empty: no wrap", s % CAP);

			TU_CHECK(map_del(&m, a[victim]) == 1, "del a[%d]", victim);
			TU_CHECK(map_del(&m, w[victim]) == 1, "del w[%d]", victim);
			TU_CHECK(m.count == 3 * N - 2, "count %zu", m.count);
			for (int i = 0; i < N; i++) {
				check_get(&m, a[i], i != victim, a[i] * 3);
				check_get(&m, b[i], 1, b[i] * 3);
				check_get(&m, w[i], i != victim, w[i] * 3);
			}
			/* Delete the rest of run a one by one, front first, checking
			 * the others each time. */
			for (int d = 0; d < N; d++) {
				if (d == victim)
					continue;
				TU_CHECK(map_del(&m, a[d]) == 1, "del a[%d]", d);
				for (int i = 0; i < N; i++) {
					check_get(&m, a[i], i > d && i != victim, a[i] * 3);
					check_get(&m, b[i], 1, b[i] * 3);
				}
			}
			/* No hole may separate a key from its home: every b key's slot
			 * is reachable from slot 11 without crossing an empty slot. */
			for (int i = 0; i < N; i++) {
				size_t s = 11;
				while (m.keys[s] != b[i]) {
					TU_CHECK(m.keys[s] != MAP_EMPTY,
						 "hole between home and b[%d]", i);
					s = (s + 1) % CAP;
				}
			}
			map_fini(&m);
		}
	}
}

static void test_growth(void)
{
	enum { N = 300000 };
	struct map m;
	size_t resizes = 0, cap = 0;

	map_init(&m);
	for (uint64_t i = 0; i < N; i++) {
		/* sequential ids (the daemon's pool ids) and scattered ones */
		uint64_t key = i & 1 ? i * 0x9E3779B97F4A7C15ull : i;
		TU_CHECK(map_put(&m, key, ~key) == 0, "put %llu", (unsigned long long)i);
		if (m.cap != cap) {
			resizes++;
			cap = m.cap;
		}
		TU_CHECK(m.count == i + 1, "count %zu after %llu puts", m.count,
			 (unsigned long long)i + 1);
		TU_CHECK(m.count * 2 <= m.cap, "load factor over 1/2");
	}
	TU_CHECK(resizes >= 10, "only %zu resizes", resizes);
	TU_CHECK((m.cap & (m.cap - 1)) == 0, "cap %zu not a power of two", m.cap);
	for (uint64_t i = 0; i < N; i++) {
		uint64_t key = i & 1 ? i * 0x9E3779B97F4A7C15ull : i;
		check_get(&m, key, 1, ~key);
	}
	for (uint64_t i = N; i < N + 1000; i++)
		check_get(&m, i, 0, 0);
	/* Delete every third key, then all: the map stays consistent. */
	for (uint64_t i = 0; i < N; i += 3) {
		uint64_t key = i & 1 ? i * 0x9E3779B97F4A7C15ull : i;
		TU_CHECK(map_del(&m, key) == 1, "del %llu", (unsigned long long)i);
	}
	for (uint64_t i = 0; i < N; i++) {
		uint64_t key = i & 1 ? i * 0x9E3779B97F4A7C15ull : i;
		check_get(&m, key, i % 3 != 0, ~key);
	}
	for (uint64_t i = 0; i < N; i++) {
		uint64_t key = i & 1 ? i * 0x9E3779B97F4A7C15ull : i;
		TU_CHECK(map_del(&m, key) == (i % 3 != 0), "del %llu", (unsigned long long)i);
	}
	TU_CHECK(m.count == 0, "count %zu after deleting all", m.count);
	for (size_t s = 0; s < m.cap; s++)
		TU_CHECK(m.keys[s] == MAP_EMPTY, "slot %zu not empty after deleting all", s);
	map_fini(&m);
}

static void test_max_key(void)
{
	struct map m;
	uint64_t key, val;
	size_t pos = 0;
	int seen_max = 0, seen_max1 = 0, n = 0;

	map_init(&m);
	TU_CHECK(!map_get(&m, UINT64_MAX), "UINT64_MAX present in an empty map");
	TU_CHECK(map_put(&m, UINT64_MAX, 1) == 0, "put UINT64_MAX");
	TU_CHECK(m.count == 1, "count %zu", m.count);
	check_get(&m, UINT64_MAX, 1, 1);
	check_get(&m, 0, 0, 0);
	/* UINT64_MAX is the empty marker inside the table: it must not make
	 * free slots look occupied or the reverse. */
	TU_CHECK(map_put(&m, 7, 70) == 0, "put 7");
	check_get(&m, 7, 1, 70);
	check_get(&m, UINT64_MAX, 1, 1);

	/* A key next to it is a different key. */
	TU_CHECK(!map_get(&m, UINT64_MAX - 1),
		 "UINT64_MAX-1 found after inserting only UINT64_MAX (keys alias)");
	TU_CHECK(map_put(&m, UINT64_MAX - 1, 2) == 0, "put UINT64_MAX-1");
	TU_CHECK(m.count == 3, "count %zu after inserting UINT64_MAX-1: keys alias", m.count);
	check_get(&m, UINT64_MAX, 1, 1);
	check_get(&m, UINT64_MAX - 1, 1, 2);

	while (map_next(&m, &pos, &key, &val)) {
		n++;
		if (key == UINT64_MAX) {
			seen_max++;
			TU_CHECK(val == 1, "iteration: UINT64_MAX has value %llu",
				 (unsigned long long)val);
		} else if (key == UINT64_MAX - 1) {
			seen_max1++;
			TU_CHECK(val == 2, "iteration: UINT64_MAX-1 has value %llu",
				 (unsigned long long)val);
		}
	}
	TU_CHECK(n == 3 && seen_max == 1 && seen_max1 == 1,
		 "iteration saw %d keys, UINT64_MAX %d times, UINT64_MAX-1 %d times", n,
		 seen_max, seen_max1);

	TU_CHECK(map_del(&m, UINT64_MAX) == 1, "del UINT64_MAX");
	check_get(&m, UINT64_MAX, 0, 0);
	check_get(&m, UINT64_MAX - 1, 1, 2);
	check_get(&m, 7, 1, 70);
	TU_CHECK(map_del(&m, UINT64_MAX) == 0, "del UINT64_MAX twice");
	map_fini(&m);
}

static void test_iteration(void)
{
	enum { N = 5000 };
	struct map m;
	static unsigned char seen[N];
	uint64_t key, val;
	size_t pos = 0, n = 0;

	map_init(&m);
	/* nothing to visit in an empty map */
	TU_CHECK(!map_next(&m, &pos, &key, &val), "iteration of an empty map");
	for (uint64_t i = 0; i < N; i++)
		TU_CHECK(!map_put(&m, i * 977 + 3, i), "put");
	/* remove some so iteration sees shifted entries */
	for (uint64_t i = 0; i < N; i += 7)
		TU_CHECK(map_del(&m, i * 977 + 3) == 1, "del");
	pos = 0;
	while (map_next(&m, &pos, &key, &val)) {
		TU_CHECK(val < N && key == val * 977 + 3, "iteration: key %llu value %llu",
			 (unsigned long long)key, (unsigned long long)val);
		TU_CHECK(val % 7 != 0, "iteration visited deleted key %llu",
			 (unsigned long long)key);
		TU_CHECK(!seen[val], "key %llu visited twice", (unsigned long long)key);
		seen[val] = 1;
		n++;
	}
	TU_CHECK(n == m.count, "iteration visited %zu keys, count %zu", n, m.count);
	for (uint64_t i = 0; i < N; i++)
		TU_CHECK(seen[i] == (i % 7 != 0), "key index %llu visited %d times",
			 (unsigned long long)i, seen[i]);
	/* iterating again from 0 gives the same number */
	pos = 0;
	n = 0;
	while (map_next(&m, &pos, &key, &val))
		n++;
	TU_CHECK(n == m.count, "second iteration visited %zu", n);
	map_fini(&m);
}

static void test_clear(void)
{
	struct map m;
	uint64_t key, val;
	size_t pos = 0;

	map_init(&m);
	map_clear(&m); /* clear of a never-used map */
	TU_CHECK(m.count == 0 && !map_get(&m, 1), "clear of an empty map");
	for (uint64_t i = 0; i < 1000; i++)
		TU_CHECK(!map_put(&m, i, i + 1), "put");
	map_clear(&m);
	TU_CHECK(m.count == 0, "count %zu after clear", m.count);
	for (uint64_t i = 0; i < 1000; i++)
		check_get(&m, i, 0, 0);
	TU_CHECK(!map_next(&m, &pos, &key, &val), "iteration after clear found a key");
	TU_CHECK(map_del(&m, 5) == 0, "del after clear");
	/* usable again, with the same keys */
	for (uint64_t i = 0; i < 1000; i += 2)
		TU_CHECK(!map_put(&m, i, i * 2), "put after clear");
	TU_CHECK(m.count == 500, "count %zu", m.count);
	for (uint64_t i = 0; i < 1000; i++)
		check_get(&m, i, i % 2 == 0, i * 2);
	map_fini(&m);
}

/* ---- differential test against a sorted array ---- */

struct ref {
	uint64_t *k, *v;
	size_t n, cap;
};

static size_t ref_lower(const struct ref *r, uint64_t key)
{
	size_t lo = 0, hi = r->n;

	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		if (r->k[mid] < key)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

static int ref_get(const struct ref *r, uint64_t key, uint64_t *val)
{
	size_t i = ref_lower(r, key);

	if (i < r->n && r->k[i] == key) {
		*val = r->v[i];
		return 1;
	}
	return 0;
}

static void ref_put(struct ref *r, uint64_t key, uint64_t val)
{
	size_t i = ref_lower(r, key);

	if (i < r->n && r->k[i] == key) {
		r->v[i] = val;
		return;
	}
	if (r->n == r->cap) {
		r->cap = r->cap ? r->cap * 2 : 1024;
		r->k = realloc(r->k, r->cap * sizeof(uint64_t));
		r->v = realloc(r->v, r->cap * sizeof(uint64_t));
		TU_CHECK(r->k && r->v, "realloc");
	}
	memmove(r->k + i + 1, r->k + i, (r->n - i) * sizeof(uint64_t));
	memmove(r->v + i + 1, r->v + i, (r->n - i) * sizeof(uint64_t));
	r->k[i] = key;
	r->v[i] = val;
	r->n++;
}

static int ref_del(struct ref *r, uint64_t key)
{
	size_t i = ref_lower(r, key);

	if (i >= r->n || r->k[i] != key)
		return 0;
	memmove(r->k + i, r->k + i + 1, (r->n - i - 1) * sizeof(uint64_t));
	memmove(r->v + i, r->v + i + 1, (r->n - i - 1) * sizeof(uint64_t));
	r->n--;
	return 1;
}

/* Every key of the reference is in the map with its value, and iteration
 * of the map yields exactly the reference's keys. */
static void full_compare(const struct map *m, const struct ref *r, long op)
{
	uint64_t key, val, *keys = malloc((m->count + 1) * sizeof(uint64_t));
	size_t pos = 0, n = 0;

	TU_CHECK(keys, "malloc");
	TU_CHECK(m->count == r->n, "op %ld: count %zu, reference %zu", op, m->count, r->n);
	for (size_t i = 0; i < r->n; i++) {
		uint64_t *v = map_get(m, r->k[i]);
		TU_CHECK(v && *v == r->v[i], "op %ld: key %#llx lost or wrong", op,
			 (unsigned long long)r->k[i]);
	}
	while (map_next(m, &pos, &key, &val)) {
		TU_CHECK(n < m->count, "op %ld: iteration yields more than count", op);
		keys[n++] = key;
	}
	TU_CHECK(n == r->n, "op %ld: iteration yields %zu keys, reference %zu", op, n, r->n);
	qsort(keys, n, sizeof(uint64_t), tu_cmp_u64);
	for (size_t i = 0; i < n; i++)
		TU_CHECK(keys[i] == r->k[i], "op %ld: iteration key %zu differs", op, i);
	free(keys);
}

static void test_differential(void)
{
	enum { OPS = 200000 };
	struct map m;
	struct ref r = { 0 };
	/* Phases with different key ranges: a small range keeps the map dense
	 * with long probe runs (load up to 1/2) and many deletions inside them. */
	static const uint64_t ranges[] = { 64, 1000, 100000, 0 /* full 64-bit */ };

	map_init(&m);
	for (long op = 0; op < OPS; op++) {
		uint64_t range = ranges[(op / 20000) % 4];
		uint64_t key = range ? rnd() % range : rnd();
		unsigned what = (unsigned)(rnd() % 100);
		uint64_t val, *mv;
		int in;

		/* Edge keys now and then (UINT64_MAX itself has its own test). */
		if (rnd() % 1000 == 0)
			key = rnd() % 2 ? 0 : UINT64_MAX - 1;
		in = ref_get(&r, key, &val);
		mv = map_get(&m, key);
		TU_CHECK(!!mv == in, "op %ld: key %#llx presence: map %d, reference %d", op,
			 (unsigned long long)key, !!mv, in);
		if (in)
			TU_CHECK(*mv == val, "op %ld: key %#llx value differs", op,
				 (unsigned long long)key);
		if (what < 50) {
			val = rnd();
			TU_CHECK(!map_put(&m, key, val), "op %ld: put", op);
			ref_put(&r, key, val);
		} else if (what < 95) {
			TU_CHECK(map_del(&m, key) == ref_del(&r, key), "op %ld: del %#llx result", op,
				 (unsigned long long)key);
		} else if (what < 96 && op % 20000 > 100) {
			/* Delete a key known to be present, from the middle of the map. */
			if (r.n) {
				key = r.k[rnd() % r.n];
				TU_CHECK(map_del(&m, key) == 1, "op %ld: del present", op);
				ref_del(&r, key);
			}
		}
		TU_CHECK(m.count == r.n, "op %ld: count %zu, reference %zu", op, m.count, r.n);
		if (op % 4999 == 0 || (range == 64 && op % 97 == 0))
			full_compare(&m, &r, op);
		if (op % 50000 == 49999) {
			map_clear(&m);
			r.n = 0;
		}
	}
	full_compare(&m, &r, OPS);
	map_fini(&m);
	free(r.k);
	free(r.v);
}

int main(void)
{
	test_basic();
	test_probe_runs();
	test_growth();
	test_iteration();
	test_clear();
	test_differential();
	test_max_key(); /* last: documents the UINT64_MAX / UINT64_MAX-1 alias */
	printf("map: ok\n");
	return 0;
}
