/*
 * pool: fixed-size objects carved from blocks and recycled through a free
 * list. Thousands of long-lived objects (connections, memberships) then sit
 * densely on few pages, instead of each pinning a page among the short-lived
 * buffers freed around it (a handshake's parser, a busy connection's wslay
 * state). Blocks go back only at pool_free(): a pool is sized by its peak.
 * Single-threaded: one pool belongs to one worker.
 */
#ifndef CHATD_POOL_H
#define CHATD_POOL_H

#include <stddef.h>

typedef struct pool_s {
    size_t size;                /* bytes per object, rounded up to 16 */
    unsigned per_block;
    void *free;                 /* free objects, linked through their first bytes */
    void *blocks;               /* every block, linked through its first bytes */
} pool_t;

/* Prepares p for objects of size bytes, per_block of them per block. */
void pool_init(pool_t *p, size_t size, unsigned per_block);

/* A zeroed object, or NULL when out of memory. */
void *pool_alloc(pool_t *p);

/* Gives obj back for reuse. */
void pool_release(pool_t *p, void *obj);

/* Frees every block; every object of p becomes invalid. */
void pool_free(pool_t *p);

#endif
