#include "pool.h"

#include <stdlib.h>
#include <string.h>

/* A block starts with the link to the next block, padded so that objects
 * keep 16-byte alignment. */
#define POOL_BLOCK_HEAD 16

void pool_init(pool_t *p, size_t size, unsigned per_block)
{
    if (size < sizeof(void *)) {
        size = sizeof(void *);
    }
    p->size = (size + 15) & ~(size_t)15;
    p->per_block = per_block > 0 ? per_block : 1;
    p->free = NULL;
    p->blocks = NULL;
}

void *pool_alloc(pool_t *p)
{
    if (p->free == NULL) {
        char *b = malloc(POOL_BLOCK_HEAD + (size_t)p->per_block * p->size);
        if (b == NULL) {
            return NULL;
        }
        *(void **)b = p->blocks;
        p->blocks = b;
        for (unsigned i = p->per_block; i-- > 0;) {
            void *obj = b + POOL_BLOCK_HEAD + (size_t)i * p->size;
            *(void **)obj = p->free;
            p->free = obj;
        }
    }
    void *obj = p->free;
    p->free = *(void **)obj;
    memset(obj, 0, p->size);
    return obj;
}

void pool_release(pool_t *p, void *obj)
{
    *(void **)obj = p->free;
    p->free = obj;
}

void pool_free(pool_t *p)
{
    void *b = p->blocks;
    while (b != NULL) {
        void *next = *(void **)b;
        free(b);
        b = next;
    }
    p->blocks = NULL;
    p->free = NULL;
}
