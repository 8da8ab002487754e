/* SPDX-License-Identifier: MIT */
/*
 * map — open-addressing hash map from uint64_t to uint64_t, linear probing
 * with backward-shift deletion (no tombstones, so a long-lived map never
 * degrades). Used for the stable and unstable indexes and for reference sets.
 * Not thread-safe: each map belongs to one owner that serialises access.
 * Memory comes from mmap, not malloc, so the library's scanner can use it
 * while an application thread holds a malloc lock.
 */
#ifndef SAMEPAGE_MAP_H
#define SAMEPAGE_MAP_H

#include <stddef.h>
#include <stdint.h>

struct map {
	uint64_t *keys;
	uint64_t *vals;
	size_t cap;   /* power of two, or 0 before the first insert */
	size_t count;
	int has_max;      /* key MAP_EMPTY lives outside the table */
	uint64_t max_val;
};

#define MAP_EMPTY UINT64_MAX

void map_init(struct map *m);
void map_fini(struct map *m);
void map_clear(struct map *m);
/* Pointer to key's value, or NULL. Invalidated by the next insert. */
uint64_t *map_get(const struct map *m, uint64_t key);
/* Insert or overwrite. 0 or -ENOMEM. */
int map_put(struct map *m, uint64_t key, uint64_t val);
/* 1 if removed, 0 if absent. */
int map_del(struct map *m, uint64_t key);
/* Iterate: start with *pos = 0; returns 0 at the end. */
int map_next(const struct map *m, size_t *pos, uint64_t *key, uint64_t *val);
/* Bytes this map holds. */
size_t map_bytes(const struct map *m);

#endif
