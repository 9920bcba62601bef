/*
 * buf: a growable byte buffer. The struct is embedded in its owner; the
 * bytes are heap memory released by buf_free(). A zeroed buf_t is empty
 * and owns nothing, so idle owners cost no heap.
 */
#ifndef CHATD_BUF_H
#define CHATD_BUF_H

#include <stddef.h>

typedef struct buf_s {
    char *data;
    size_t len;
    size_t cap;
} buf_t;

/* Appends n bytes. Returns 0, or -1 when memory ran out (buf unchanged). */
int buf_append(buf_t *b, const void *p, size_t n);

/* Drops the first n bytes. */
void buf_consume(buf_t *b, size_t n);

/* Releases the bytes; b becomes empty. */
void buf_free(buf_t *b);

#endif
