/* SPDX-License-Identifier: MIT */
/* map — see map.h. */
#define _GNU_SOURCE
#include "map.h"

#include <errno.h>
#include <string.h>
#include <sys/mman.h>

#include "os.h"

static size_t slot_of(uint64_t key, size_t cap)
{
	/* Keys may be sequential ids; mix them so probes do not cluster. */
	key ^= key >> 33;
	key *= 0xff51afd7ed558ccdULL;
	key ^= key >> 33;
	return (size_t)key & (cap - 1);
}

void map_init(struct map *m)
{
	memset(m, 0, sizeof(*m));
}

static void free_arrays(uint64_t *keys, size_t cap)
{
	if (cap)
		os_munmap(keys, cap * 2 * sizeof(uint64_t));
}

void map_fini(struct map *m)
{
	free_arrays(m->keys, m->cap);
	map_init(m);
}

void map_clear(struct map *m)
{
	if (m->cap)
		memset(m->keys, 0xff, m->cap * sizeof(uint64_t));
	m->count = 0;
	m->has_max = 0;
}

uint64_t *map_get(const struct map *m, uint64_t key)
{
	if (key == MAP_EMPTY)
		return m->has_max ? (uint64_t *)&m->max_val : NULL;
	if (m->count == (size_t)m->has_max)
		return NULL;
	for (size_t i = slot_of(key, m->cap);; i = (i + 1) & (m->cap - 1)) {
		if (m->keys[i] == key)
			return &m->vals[i];
		if (m->keys[i] == MAP_EMPTY)
			return NULL;
	}
}

static void raw_put(struct map *m, uint64_t key, uint64_t val)
{
	size_t i = slot_of(key, m->cap);

	while (m->keys[i] != MAP_EMPTY && m->keys[i] != key)
		i = (i + 1) & (m->cap - 1);
	if (m->keys[i] == MAP_EMPTY)
		m->count++;
	m->keys[i] = key;
	m->vals[i] = val;
}

static int grow(struct map *m)
{
	size_t ncap = m->cap ? m->cap * 2 : 64;
	void *mem = os_mmap(NULL, ncap * 2 * sizeof(uint64_t), PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	struct map old = *m;
	size_t keep = m->has_max;

	if (mem == MAP_FAILED)
		return -ENOMEM;
	m->keys = mem;
	m->vals = m->keys + ncap;
	m->cap = ncap;
	m->count = keep;
	memset(m->keys, 0xff, ncap * sizeof(uint64_t));
	for (size_t i = 0; i < old.cap; i++)
		if (old.keys[i] != MAP_EMPTY)
			raw_put(m, old.keys[i], old.vals[i]);
	free_arrays(old.keys, old.cap);
	return 0;
}

int map_put(struct map *m, uint64_t key, uint64_t val)
{
	if (key == MAP_EMPTY) {
		m->count += !m->has_max;
		m->has_max = 1;
		m->max_val = val;
		return 0;
	}
	/* Load factor at most 1/2 keeps linear probes short. */
	if ((m->count + 1) * 2 > m->cap) {
		int err = grow(m);
		if (err)
			return err;
	}
	raw_put(m, key, val);
	return 0;
}

int map_del(struct map *m, uint64_t key)
{
	size_t i, j, mask = m->cap - 1;

	if (key == MAP_EMPTY) {
		if (!m->has_max)
			return 0;
		m->has_max = 0;
		m->count--;
		return 1;
	}
	if (m->count == (size_t)m->has_max)
		return 0;
	for (i = slot_of(key, m->cap); m->keys[i] != key; i = (i + 1) & mask)
		if (m->keys[i] == MAP_EMPTY)
			return 0;
	/* Backward shift: pull later members of the probe run into the hole. */
	for (j = (i + 1) & mask; m->keys[j] != MAP_EMPTY; j = (j + 1) & mask) {
		size_t home = slot_of(m->keys[j], m->cap);
		if (((j - home) & mask) >= ((j - i) & mask)) {
			m->keys[i] = m->keys[j];
			m->vals[i] = m->vals[j];
			i = j;
		}
	}
	m->keys[i] = MAP_EMPTY;
	m->count--;
	return 1;
}

int map_next(const struct map *m, size_t *pos, uint64_t *key, uint64_t *val)
{
	if (*pos == 0 && m->has_max) {
		*key = MAP_EMPTY;
		*val = m->max_val;
		*pos = SIZE_MAX;
		return 1;
	}
	if (*pos == SIZE_MAX)
		*pos = 0;
	for (; *pos < m->cap; (*pos)++) {
		if (m->keys[*pos] != MAP_EMPTY) {
			*key = m->keys[*pos];
			*val = m->vals[*pos];
			(*pos)++;
			return 1;
		}
	}
	return 0;
}

size_t map_bytes(const struct map *m)
{
	return m->cap * 2 * sizeof(uint64_t);
}
