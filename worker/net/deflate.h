/*
 * deflate: permessage-deflate (RFC 7692) for the connections that
 * negotiate it (--deflate). chatd always answers with
 * server_no_context_takeover and client_no_context_takeover: every message
 * is compressed and inflated on its own, so one zlib stream each way per
 * worker serves every connection (a connection costs no zlib memory), and
 * a broadcast is compressed once per worker and shared by reference like
 * its plain frame (wsframe_t.alt).
 */
#ifndef CHATD_DEFLATE_H
#define CHATD_DEFLATE_H

#include <stddef.h>
#include <stdint.h>

#include <zlib.h>

#include "../../common/buf.h"
#include "wsframe.h"

/* What the server answers when it accepts an offer. */
#define DEFLATE_RESPONSE \
    "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n"

/* Frames shorter than this go uncompressed: the saving would not pay. */
#define DEFLATE_MIN_PAYLOAD 64

typedef struct deflate_s {
    z_stream out;               /* compresses server frames */
    z_stream in;                /* inflates client messages */
    int out_ready, in_ready;
    uint64_t bytes_in, bytes_out;   /* payload before and after, for /metrics */
} deflate_t;

/*
 * Whether the Sec-WebSocket-Extensions offers (a comma-separated list)
 * hold a permessage-deflate offer chatd can accept: its parameters among
 * server_no_context_takeover, client_no_context_takeover,
 * client_max_window_bits[=8..15] and server_max_window_bits=15 (a smaller
 * server window cannot share one stream), none twice. 1 or 0.
 */
int deflate_negotiate(const char *offers);

/* Sets up both streams. Returns 0 or -1 (zlib could not allocate). */
int deflate_init(deflate_t *d);
void deflate_free(deflate_t *d);

/*
 * The compressed form of the text frame f (RSV1 set), made once and kept
 * in f->alt; f itself when compressing would not help (short, or no
 * smaller). Never NULL. The frame returned is f's or f->alt: callers take
 * their own reference.
 */
wsframe_t *deflate_frame(deflate_t *d, wsframe_t *f);

/*
 * Inflates one compressed message into out (cleared first), at most limit
 * bytes. Returns 0, -1 when the result would exceed limit, -2 when the
 * data is not valid deflate.
 */
int deflate_inflate(deflate_t *d, const uint8_t *in, size_t len, size_t limit, buf_t *out);

#endif
