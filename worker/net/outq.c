#include "outq.h"

#include <stdlib.h>

#define OUTQ_MIN_CAP 8

static int outq_grow(outq_t **qp)
{
    outq_t *q = *qp;
    uint32_t old = q != NULL ? q->cap : 0;
    uint32_t cap = old == 0 ? OUTQ_MIN_CAP : old * 2;
    if (cap < old) {
        return -1;
    }
    outq_t *n = malloc(sizeof(*n) + (size_t)cap * sizeof(n->ring[0]));
    if (n == NULL) {
        return -1;
    }
    if (q == NULL) {
        *n = (outq_t){ 0 };
    } else {
        *n = *q;
        /* Unrolled into the new ring from index 0. */
        for (uint32_t i = 0; i < q->len; i++) {
            n->ring[i] = q->ring[(q->head + i) & (q->cap - 1)];
        }
        n->head = 0;
        free(q);
    }
    n->cap = cap;
    *qp = n;
    return 0;
}

int outq_push(outq_t **qp, wsframe_t *f)
{
    if ((*qp == NULL || (*qp)->len == (*qp)->cap) && outq_grow(qp) != 0) {
        return -1;
    }
    outq_t *q = *qp;
    q->ring[(q->head + q->len) & (q->cap - 1)] = f;
    q->len++;
    q->bytes += f->len;
    return 0;
}

int outq_iov(const outq_t *q, uv_buf_t *iov, int max)
{
    int n = 0;
    for (uint32_t i = 0; q != NULL && i < q->len && n < max; i++) {
        wsframe_t *f = q->ring[(q->head + i) & (q->cap - 1)];
        uint32_t skip = i == 0 ? q->off : 0;
        if (f->len > skip) {
            iov[n++] = uv_buf_init((char *)f->data + skip, f->len - skip);
        }
    }
    return n;
}

/* Releases the oldest frame. */
static void outq_pop(outq_t *q)
{
    wsframe_unref(q->ring[q->head]);
    q->head = (q->head + 1) & (q->cap - 1);
    q->len--;
    q->off = 0;
    if (q->pinned > 0) {
        q->pinned--;
    }
}

void outq_consume(outq_t *q, size_t n)
{
    if (q == NULL) {
        return;
    }
    q->bytes -= n < q->bytes ? n : q->bytes;
    while (q->len > 0) {
        wsframe_t *f = q->ring[q->head];
        size_t left = f->len - q->off;
        if (n < left) {
            q->off += (uint32_t)n;
            return;
        }
        n -= left;
        outq_pop(q);
    }
}

void outq_pin(outq_t *q, uint32_t n)
{
    if (q != NULL) {
        q->pinned = n < q->len ? n : q->len;
    }
}

void outq_drop_unstarted(outq_t *q)
{
    if (q == NULL) {
        return;
    }
    uint32_t keep = q->pinned;
    if (keep == 0 && q->len > 0 && q->off > 0) {
        keep = 1;       /* the oldest frame is partly out: its tail must follow */
    }
    while (q->len > keep) {
        uint32_t last = (q->head + q->len - 1) & (q->cap - 1);
        wsframe_t *f = q->ring[last];
        q->bytes -= f->len;
        wsframe_unref(f);
        q->len--;
    }
}

void outq_clear(outq_t **qp)
{
    outq_t *q = *qp;
    if (q == NULL) {
        return;
    }
    while (q->len > 0) {
        outq_pop(q);
    }
    free(q);
    *qp = NULL;
}

void outq_trim(outq_t **qp)
{
    if (*qp != NULL && (*qp)->len == 0) {
        free(*qp);
        *qp = NULL;
    }
}
