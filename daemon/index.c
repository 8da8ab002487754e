/* SPDX-License-Identifier: MIT */
/* index — see index.h. */
#define _GNU_SOURCE
#include "index.h"

#include <errno.h>
#include <string.h>
#include <sys/mman.h>

#include "os.h"

#include "proto.h"

#define NO_PAGE UINT32_MAX

int index_init(struct index *ix)
{
	memset(ix, 0, sizeof(*ix));
	map_init(&ix->unstable);
	return 0;
}

void index_fini(struct index *ix)
{
	if (ix->cap)
		os_munmap(ix->heads, ix->cap * sizeof(uint32_t));
	map_fini(&ix->unstable);
	memset(ix, 0, sizeof(*ix));
}

static uint64_t chain_len(struct pool *p, uint32_t head)
{
	uint64_t n = 0;

	for (uint32_t id = head; id != NO_PAGE; id = pool_page(p, id)->next)
		n++;
	return n;
}

/* Keep stable_node_chains/dups as the kernel defines them: a chain is a
 * hash with two or more pages, each page in it a dup. */
static void account_chain(struct index *ix, uint64_t len, int sign)
{
	if (len < 2)
		return;
	ix->chains += sign;
	ix->dups += sign * (int64_t)len;
}

/* ---- the stable table: chain heads by content hash ----
 * Open addressing over 4-byte pool ids; a slot's key is the hash its pool
 * page records, so the table costs 4 bytes a slot (at most 3/4 full), not
 * the 16 of a hash → id map. XXH3 is well mixed: its low bits place a
 * slot. Linear probing with backward-shift deletion, as in map.c. */

static uint32_t *head_slot(const struct index *ix, struct pool *p, uint64_t hash)
{
	if (!ix->cap)
		return NULL;
	for (size_t i = hash & (ix->cap - 1);; i = (i + 1) & (ix->cap - 1)) {
		if (ix->heads[i] == NO_PAGE)
			return NULL;
		if (pool_page(p, ix->heads[i])->hash == hash)
			return &ix->heads[i];
	}
}

static void head_place(uint32_t *heads, size_t cap, uint64_t hash, uint32_t id)
{
	size_t i = hash & (cap - 1);

	while (heads[i] != NO_PAGE)
		i = (i + 1) & (cap - 1);
	heads[i] = id;
}

static int head_put(struct index *ix, struct pool *p, uint32_t id)
{
	if ((ix->nheads + 1) * 4 > ix->cap * 3) {
		size_t ncap = ix->cap ? ix->cap * 2 : 1024;
		uint32_t *nh = os_mmap(NULL, ncap * sizeof(uint32_t), PROT_READ | PROT_WRITE,
				       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (nh == MAP_FAILED)
			return -ENOMEM;
		memset(nh, 0xff, ncap * sizeof(uint32_t));
		for (size_t i = 0; i < ix->cap; i++)
			if (ix->heads[i] != NO_PAGE)
				head_place(nh, ncap, pool_page(p, ix->heads[i])->hash, ix->heads[i]);
		if (ix->cap)
			os_munmap(ix->heads, ix->cap * sizeof(uint32_t));
		ix->heads = nh;
		ix->cap = ncap;
	}
	head_place(ix->heads, ix->cap, pool_page(p, id)->hash, id);
	ix->nheads++;
	return 0;
}

static void head_del(struct index *ix, struct pool *p, uint32_t *slot)
{
	size_t mask = ix->cap - 1, i = (size_t)(slot - ix->heads), j = i;

	for (;;) {
		j = (j + 1) & mask;
		if (ix->heads[j] == NO_PAGE)
			break;
		size_t k = pool_page(p, ix->heads[j])->hash & mask; /* its home */
		/* Move j back to i unless its home lies cyclically in (i, j]. */
		if (i <= j ? (k <= i || k > j) : (k <= i && k > j)) {
			ix->heads[i] = ix->heads[j];
			i = j;
		}
	}
	ix->heads[i] = NO_PAGE;
	ix->nheads--;
}

int stable_has(struct index *ix, struct pool *p, uint64_t hash)
{
	return head_slot(ix, p, hash) != NULL;
}

uint32_t stable_first(struct index *ix, struct pool *p, uint64_t hash)
{
	uint32_t *head = head_slot(ix, p, hash);

	return head ? *head : SP_POOL_NONE;
}

uint32_t stable_find(struct index *ix, struct pool *p, uint64_t hash, uint32_t max_sharing)
{
	uint32_t *head = head_slot(ix, p, hash);

	if (!head)
		return SP_POOL_NONE;
	for (uint32_t id = *head; id != NO_PAGE;) {
		struct pool_page *pg = pool_page(p, id);
		if (pg->hash == hash && pg->refs < max_sharing)
			return id;
		id = pg->next;
	}
	return SP_POOL_NONE;
}

int stable_insert(struct index *ix, struct pool *p, uint32_t id)
{
	struct pool_page *pg = pool_page(p, id);
	uint32_t *head = head_slot(ix, p, pg->hash);
	uint64_t len;

	if (!head) {
		pg->next = NO_PAGE;
		return head_put(ix, p, id);
	}
	/* In the chain already (a page put back after a move, move.c): once. */
	for (uint32_t q = *head; q != NO_PAGE; q = pool_page(p, q)->next)
		if (q == id)
			return 0;
	len = chain_len(p, *head);
	account_chain(ix, len, -1);
	pg->next = *head;
	*head = id;
	account_chain(ix, len + 1, +1);
	return 0;
}

void stable_remove(struct index *ix, struct pool *p, uint32_t id)
{
	struct pool_page *pg = pool_page(p, id);
	uint32_t *head = head_slot(ix, p, pg->hash), prev = NO_PAGE;
	uint64_t len;

	if (!head)
		return;
	/* A page taken out before (moved away, rewritten in place) is not
	 * in the chain: nothing to undo, and the chain's count must stay. */
	if (*head != id) {
		for (prev = *head; prev != NO_PAGE && pool_page(p, prev)->next != id;)
			prev = pool_page(p, prev)->next;
		if (prev == NO_PAGE)
			return;
	}
	len = chain_len(p, *head);
	account_chain(ix, len, -1);
	if (*head == id) {
		if (pg->next == NO_PAGE)
			head_del(ix, p, head);
		else
			*head = pg->next;
	} else {
		pool_page(p, prev)->next = pg->next;
	}
	account_chain(ix, len - 1, +1);
	pg->next = NO_PAGE;
}

/* An unstable entry lives in the map's value: the page number (x86-64 and
 * arm64 user addresses fit in 35 bits of it) and the connection (29 bits;
 * ids are not reused before 2^29 connections). 16 bytes a slot, where a
 * slot plus a separate item took 32. */
#define ADDR_BITS 35
static uint64_t pack(uint32_t conn, uint64_t addr)
{
	return ((addr >> 12) & ((1ull << ADDR_BITS) - 1)) | (uint64_t)conn << ADDR_BITS;
}

static struct unstable_item unpack(uint64_t v)
{
	return (struct unstable_item){ .addr = (v & ((1ull << ADDR_BITS) - 1)) << 12,
				       .conn = (uint32_t)(v >> ADDR_BITS) };
}

int unstable_offer(struct index *ix, uint64_t hash, uint32_t conn, uint64_t addr,
		   int (*alive)(void *ctx, uint32_t conn), void *ctx,
		   struct unstable_item *matched)
{
	uint64_t *slot = map_get(&ix->unstable, hash), me;

	conn &= (1u << (64 - ADDR_BITS)) - 1;
	me = pack(conn, addr);
	if (slot) {
		struct unstable_item it = unpack(*slot);
		if (*slot == me)
			return 0; /* the same page, offered again by a later pass */
		if (alive && !alive(ctx, it.conn)) {
			*slot = me;
			return 0;
		}
		if (matched)
			*matched = it;
		map_del(&ix->unstable, hash);
		return 1;
	}
	return map_put(&ix->unstable, hash, me);
}

/* A table that was mostly empty this generation is freed rather than kept
 * at its largest; a busy one is cleared and kept: freeing and faulting a
 * table of megabytes back in every generation cost the daemon a tenth of
 * its time in this VM (TLB flushes, page faults). */
void unstable_reset(struct index *ix)
{
	if (ix->unstable.count * 8 < ix->unstable.cap) {
		map_fini(&ix->unstable);
		map_init(&ix->unstable);
	} else {
		map_clear(&ix->unstable);
	}
}

uint64_t unstable_count(const struct index *ix)
{
	return ix->unstable.count;
}

int index_check(struct index *ix, struct pool *p)
{
	uint64_t chains = 0, dups = 0, heads = 0;

	for (size_t i = 0; i < ix->cap; i++) {
		uint64_t len = 0, key;
		if (ix->heads[i] == NO_PAGE)
			continue;
		heads++;
		if (!pool_page(p, ix->heads[i]))
			return -EUCLEAN;
		key = pool_page(p, ix->heads[i])->hash;
		if (head_slot(ix, p, key) != &ix->heads[i])
			return -EUCLEAN; /* unreachable from its hash */
		for (uint32_t id = ix->heads[i]; id != NO_PAGE; len++) {
			struct pool_page *pg = pool_page(p, id);
			if (!pg || pg->hash != key || pg->refs == 0)
				return -EUCLEAN;
			id = pg->next;
		}
		if (len > 1) {
			chains++;
			dups += len;
		}
	}
	return chains == ix->chains && dups == ix->dups && heads == ix->nheads ? 0 : -EUCLEAN;
}

uint64_t index_bytes(const struct index *ix)
{
	return ix->cap * sizeof(uint32_t) + map_bytes(&ix->unstable);
}
