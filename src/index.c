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
	map_init(&ix->stable);
	map_init(&ix->unstable);
	return 0;
}

void index_fini(struct index *ix)
{
	map_fini(&ix->stable);
	map_fini(&ix->unstable);
	if (ix->items_cap)
		os_munmap(ix->items, ix->items_cap * sizeof(*ix->items));
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

uint32_t stable_find(struct index *ix, struct pool *p, uint64_t hash, uint32_t max_sharing)
{
	uint64_t *head = map_get(&ix->stable, hash);

	if (!head)
		return SP_POOL_NONE;
	for (uint32_t id = (uint32_t)*head; id != NO_PAGE;) {
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
	uint64_t *head = map_get(&ix->stable, pg->hash);
	uint64_t len;

	if (!head) {
		pg->next = NO_PAGE;
		return map_put(&ix->stable, pg->hash, id);
	}
	len = chain_len(p, (uint32_t)*head);
	account_chain(ix, len, -1);
	pg->next = (uint32_t)*head;
	*head = id;
	account_chain(ix, len + 1, +1);
	return 0;
}

void stable_remove(struct index *ix, struct pool *p, uint32_t id)
{
	struct pool_page *pg = pool_page(p, id);
	uint64_t *head = map_get(&ix->stable, pg->hash);
	uint64_t len;

	if (!head)
		return;
	len = chain_len(p, (uint32_t)*head);
	account_chain(ix, len, -1);
	if (*head == id) {
		if (pg->next == NO_PAGE)
			map_del(&ix->stable, pg->hash);
		else
			*head = pg->next;
	} else {
		for (uint32_t prev = (uint32_t)*head; prev != NO_PAGE;) {
			struct pool_page *pp = pool_page(p, prev);
			if (pp->next == id) {
				pp->next = pg->next;
				break;
			}
			prev = pp->next;
		}
	}
	account_chain(ix, len - 1, +1);
	pg->next = NO_PAGE;
}

static int items_reserve(struct index *ix)
{
	uint64_t ncap = ix->items_cap ? ix->items_cap * 2 : 4096;
	void *mem;

	if (ix->items_len < ix->items_cap)
		return 0;
	if (ix->items_cap)
		mem = os_mremap(ix->items, ix->items_cap * sizeof(*ix->items),
				ncap * sizeof(*ix->items), MREMAP_MAYMOVE, NULL);
	else
		mem = os_mmap(NULL, ncap * sizeof(*ix->items), PROT_READ | PROT_WRITE,
			      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED)
		return -ENOMEM;
	ix->items = mem;
	ix->items_cap = ncap;
	return 0;
}

int unstable_offer(struct index *ix, uint64_t hash, uint32_t conn, uint64_t addr,
		   int (*alive)(void *ctx, uint32_t conn), void *ctx)
{
	uint64_t *slot = map_get(&ix->unstable, hash);
	int err;

	if (slot) {
		struct unstable_item *it = &ix->items[*slot];
		if (it->conn == conn && it->addr == addr)
			return 0; /* the same page, offered again by a later pass */
		if (alive && !alive(ctx, it->conn)) {
			*it = (struct unstable_item){ .addr = addr, .conn = conn };
			return 0;
		}
		map_del(&ix->unstable, hash);
		return 1;
	}
	err = items_reserve(ix);
	if (err)
		return err;
	ix->items[ix->items_len] = (struct unstable_item){ .addr = addr, .conn = conn };
	err = map_put(&ix->unstable, hash, ix->items_len);
	if (err)
		return err;
	ix->items_len++;
	return 0;
}

void unstable_reset(struct index *ix)
{
	map_clear(&ix->unstable);
	ix->items_len = 0;
}

uint64_t unstable_count(const struct index *ix)
{
	return ix->unstable.count;
}

int index_check(struct index *ix, struct pool *p)
{
	uint64_t key, val, chains = 0, dups = 0;
	size_t pos = 0;

	while (map_next(&ix->stable, &pos, &key, &val)) {
		uint64_t len = 0;
		for (uint32_t id = (uint32_t)val; id != NO_PAGE; len++) {
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
	return chains == ix->chains && dups == ix->dups ? 0 : -EUCLEAN;
}

uint64_t index_bytes(const struct index *ix)
{
	return map_bytes(&ix->stable) + map_bytes(&ix->unstable) +
	       ix->items_cap * sizeof(*ix->items);
}
