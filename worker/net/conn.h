/*
 * conn: one client TCP connection, from accept through the HTTP request to
 * the WebSocket session and the close. The net wing owns every conn on its
 * list; a conn's memory goes back only after its uv_close callback and its
 * last conn_unref(), so a conn closed inside one of its own callbacks stays
 * valid until that call chain ends.
 */
#ifndef CHATD_CONN_H
#define CHATD_CONN_H

#include <stdint.h>

#include <uv.h>
#include <wslay/wslay.h>

#include "../../common/buf.h"
#include "http.h"
#include "outq.h"
#include "wsframe.h"

typedef struct net_s net_t;
typedef struct conn_write_s conn_write_t;
typedef struct conn_tls_s conn_tls_t;

typedef enum {
    CONN_HTTP = 0,      /* reading the request */
    CONN_WS,            /* upgraded, session live */
    CONN_CLOSING,       /* answered or close frame queued: draining output */
    CONN_CLOSED         /* uv_close called; waiting for close_cb */
} conn_state_t;

typedef struct conn_s {
    uv_tcp_t tcp;               /* first: the handle's address is the conn's */
    net_t *net;
    struct conn_s *prev, *next; /* net's list of conns */
    struct conn_s *dirty_next;  /* net's list of conns with output */
    uint8_t state;
    uint8_t dirty;
    uint8_t writing;            /* a uv_write of pinned frames is in flight */
    uint8_t shut_after_write;   /* close the socket once output is written */
    uint8_t lingering;          /* FIN sent; reading and dropping until EOF */
    uint8_t fail_fast;          /* drop TCP once the close frame is out (RFC 6455 7.1.7) */
    uint8_t handle_closed;      /* uv_close finished; freed when refs drop to 0 */
    uint8_t deflate;            /* permessage-deflate negotiated */
    uint32_t refs;              /* pending Redis replies that point here */
    http_req_t *http;           /* only while CONN_HTTP */
    wslay_event_context_ptr ws; /* from the upgrade on */
    uint8_t hdr[14];            /* a frame header being received (ws_scan) */
    uint8_t hdr_len;
    uint8_t msg_open;           /* a fragmented message is being received */
    uint64_t payload_left;      /* bytes of the current frame's payload to come */
    outq_t *out;                /* frames waiting to be written (or, with TLS,
                                 * encrypted); NULL when none */
    conn_tls_t *tls;            /* only on the TLS port */
    conn_write_t *wreq;         /* only while a write waits for the socket */
    uv_shutdown_t *sreq;        /* only while lingering */
    /* The loop's clock in milliseconds, cut to 32 bits: only ever
     * compared as differences, so they survive its wrap every 49 days. */
    uint32_t created_ms;
    uint32_t last_seen_ms;      /* last byte from the peer */
    uint32_t last_io_ms;        /* last byte either way (frees idle wslay state) */
    uint32_t next_ping_ms;
    uint32_t close_deadline_ms;
    uint32_t peer_ip;           /* IPv4 in network order, 0 for others and
                                 * when not counted in the per-IP limit */
} conn_t;

/* Accepts one connection from the listener into a new conn, speaking TLS
 * when tls is set. Returns 0 or a negative libuv error. */
int conn_accept(net_t *n, uv_stream_t *listener, int tls);

/* Frees the request parsers kept for reuse. */
void conn_free_http_cache(net_t *n);

/*
 * Queues a reference to a text frame built once for many receivers (the
 * caller keeps its own reference). Closes c with 1013 when its outgoing
 * queue would exceed the configured bound. Returns 0, or -1 when the frame
 * was not queued (c is closing or closed).
 */
int conn_send_frame(conn_t *c, wsframe_t *f);

/* Frames and queues one text message; as conn_send_frame(). */
int conn_send_text(conn_t *c, const char *data, size_t len);

/* Queues bytes as they are (an HTTP answer, wslay's output) after what is
 * queued. Returns 0 or -1 (out of memory: the conn is aborted). */
int conn_send_raw(conn_t *c, const void *bytes, size_t len);

/* Keeps c's memory alive across an asynchronous call; the callback checks
 * c->state before using it and then calls conn_unref(). */
void conn_ref(conn_t *c);
void conn_unref(conn_t *c);

/* Queues output for the next flush. */
void conn_mark_dirty(conn_t *c);

/* Writes whatever is queued; net_flush() calls it before each poll. */
void conn_flush(conn_t *c);

/*
 * An HTTP exchange that outlives the request callback: an upload whose
 * body streams to storage, a download that streams from it. The server's
 * http hook begins it on the conn it was given; from then on net calls
 * these (each may be NULL) until conn_exchange_end():
 *  - body: decoded body bytes (after conn_body_read); returns 0, or -1
 *    when it has answered and wants no more;
 *  - body_end: the body is complete;
 *  - writable: fewer than CONN_STREAM_LOW bytes wait to be written;
 *  - gone: the conn ended first (the peer left, a stall timed out, the
 *    body was malformed and net answered 400); called once.
 * A body that stops arriving for --handshake-timeout seconds, unless
 * paused by the reader, and output the peer stops taking for as long, end
 * the conn. The owner holds a conn_ref() while it waits on anything.
 */
#define CONN_STREAM_LOW (256 * 1024)

typedef struct conn_exchange_s {
    int (*body)(void *ud, conn_t *c, const char *data, size_t len);
    void (*body_end)(void *ud, conn_t *c);
    void (*writable)(void *ud, conn_t *c);
    void (*gone)(void *ud, conn_t *c);
} conn_exchange_t;

/* The request being answered, or NULL once upgraded or closed. */
const http_req_t *conn_request(const conn_t *c);

void conn_exchange_begin(conn_t *c, const conn_exchange_t *x, void *ud);

/* No more callbacks; the owner answers (or has answered) by itself. */
void conn_exchange_end(conn_t *c);

/* Starts delivering the request's body (with "100 Continue" first when
 * the client waits for it). Returns 0 or -1 (no body: not a POST). */
int conn_body_read(conn_t *c);

/* Stops reading the body while the reader's storage catches up, or
 * resumes. */
void conn_body_pause(conn_t *c, int paused);

/* Sends an HTTP response, then closes. */
void conn_http_reply(conn_t *c, int status, const char *content_type,
                     const char *extra_headers, const char *body, size_t len);

/*
 * Closes with a WebSocket close frame (code 0 means none, e.g. before the
 * upgrade), after the queued output. The session ends at once.
 */
void conn_close(conn_t *c, uint16_t code, const char *reason);

/* Drops the connection now, without a close frame. */
void conn_abort(conn_t *c);

/* Bytes queued for the client and not yet written. */
size_t conn_pending_bytes(const conn_t *c);

/* The once-a-second housekeeping for this conn (timeouts, pings). */
void conn_tick(conn_t *c, uint64_t now_ms);

#endif
