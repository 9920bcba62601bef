/*
 * wsframe: bytes on their way to a client, built once and shared by
 * reference. A server-to-client WebSocket frame is unmasked, so a message
 * fanned out to a thousand members is the same bytes a thousand times:
 * it is framed once and every member's queue holds a reference (as uWS's
 * pub/sub and gorilla/websocket's prepared messages do). The same type
 * carries bytes that are already framed (an HTTP answer, wslay's control
 * frames) so that one queue keeps every byte of a connection in order.
 */
#ifndef CHATD_WSFRAME_H
#define CHATD_WSFRAME_H

#include <stddef.h>
#include <stdint.h>

typedef struct wsframe_s {
    uint32_t refs;
    uint32_t len;               /* bytes in data */
    struct wsframe_s *alt;      /* its permessage-deflate form (deflate.c), owned */
    uint8_t alt_done;           /* alt was tried (NULL then: not worth it) */
    uint8_t data[];
} wsframe_t;

/* The largest payload a frame may carry (its length fits in len). */
#define WSFRAME_MAX_PAYLOAD (UINT32_MAX - 16u)

/*
 * A final, unmasked text frame whose payload is the concatenation of up to
 * three parts (b and c may be NULL with length 0): a message wrapped in a
 * fixed head and tail needs no intermediate copy. Returns the frame with
 * one reference, or NULL when out of memory or too large.
 */
wsframe_t *wsframe_text(const char *a, size_t alen, const char *b, size_t blen,
                        const char *c, size_t clen);

/* A final, unmasked frame of plen payload bytes whose first header byte is
 * first (FIN, RSV bits, opcode). NULL when out of memory or too large. */
wsframe_t *wsframe_data(uint8_t first, const void *payload, size_t plen);

/* A frame of len bytes for the caller to fill (data is uninitialised),
 * with one reference; NULL when out of memory or too large. */
wsframe_t *wsframe_new(size_t len);

/* Bytes sent as they are (already framed, or not WebSocket at all), with
 * one reference; NULL when out of memory or too large. */
wsframe_t *wsframe_raw(const void *bytes, size_t len);

/* Takes one more reference. */
static inline wsframe_t *wsframe_ref(wsframe_t *f)
{
    f->refs++;
    return f;
}

/* Drops one reference; the last one frees the frame. NULL is ignored. */
void wsframe_unref(wsframe_t *f);

#endif
