/*
 * outq: a connection's output, as a ring of frame references. Queuing a
 * broadcast costs one pointer and one reference count, never a copy; the
 * flush hands the queued bytes to one writev. The queue (header and ring
 * in one allocation) exists while the connection has output and is given
 * back once it has been idle, so an idle connection pays one pointer.
 * A NULL queue is an empty one to every function here.
 */
#ifndef CHATD_OUTQ_H
#define CHATD_OUTQ_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "wsframe.h"

typedef struct outq_s {
    uint32_t head;              /* index of the oldest frame */
    uint32_t len;               /* frames queued */
    uint32_t cap;               /* slots in ring, a power of two */
    uint32_t off;               /* bytes of the oldest frame already written */
    uint32_t pinned;            /* frames, from the oldest, a write in flight points into */
    size_t bytes;               /* bytes queued and not yet written */
    wsframe_t *ring[];
} outq_t;

/* Appends f to *qp (made or grown as needed), taking over the caller's
 * reference. Returns 0, or -1 when out of memory (the reference is then
 * still the caller's). */
int outq_push(outq_t **qp, wsframe_t *f);

/* Frames and bytes queued. */
static inline uint32_t outq_len(const outq_t *q)
{
    return q != NULL ? q->len : 0;
}

static inline size_t outq_bytes(const outq_t *q)
{
    return q != NULL ? q->bytes : 0;
}

/* Fills up to max buffers with the unwritten bytes, oldest first. Returns
 * how many it filled. */
int outq_iov(const outq_t *q, uv_buf_t *iov, int max);

/* n more bytes were written: frames wholly written are released. */
void outq_consume(outq_t *q, size_t n);

/* Marks the first n frames as pointed into by a write in flight (0 when
 * it finished), so that outq_drop_unstarted() keeps them. */
void outq_pin(outq_t *q, uint32_t n);

/* Drops every frame no byte of which went out, except pinned ones: what
 * is left is whole frames' tails, so a close frame queued next is never
 * preceded by a partial frame. */
void outq_drop_unstarted(outq_t *q);

/* Releases every frame and the queue. */
void outq_clear(outq_t **qp);

/* Frees an empty queue. */
void outq_trim(outq_t **qp);

#endif
