/*
 * conn: one client TCP connection, from accept through the HTTP request to
 * the WebSocket session and the close. The worker owns every conn on its
 * list; a conn is freed only in its uv_close callback, so a conn closed
 * inside one of its own callbacks stays valid until that call chain ends.
 */
#ifndef CHATD_CONN_H
#define CHATD_CONN_H

#include <stdint.h>

#include <uv.h>
#include <wslay/wslay.h>

#include "../common/buf.h"
#include "http.h"
#include "session.h"

typedef struct worker_s worker_t;

typedef enum {
    CONN_HTTP = 0,      /* reading the request */
    CONN_WS,            /* upgraded, session live */
    CONN_CLOSING,       /* answered or close frame queued: draining output */
    CONN_CLOSED         /* uv_close called; waiting for close_cb */
} conn_state_t;

typedef struct conn_s {
    uv_tcp_t tcp;               /* first: the handle's address is the conn's */
    worker_t *w;
    struct conn_s *prev, *next; /* the worker's list of conns */
    struct conn_s *dirty_next;  /* the worker's list of conns with output */
    uint8_t state;
    uint8_t dirty;
    uint8_t writing;            /* a uv_write of wbuf is in flight */
    uint8_t shut_after_write;   /* close the socket once output is written */
    uint8_t lingering;          /* FIN sent; reading and dropping until EOF */
    uint8_t fail_fast;          /* drop TCP once the close frame is out (RFC 6455 7.1.7) */
    uint8_t handle_closed;      /* uv_close finished; freed when refs drop to 0 */
    uint32_t refs;              /* pending Redis replies that point here */
    http_req_t *http;           /* only while CONN_HTTP */
    wslay_event_context_ptr ws; /* from the upgrade on */
    uint8_t hdr[14];            /* a frame header being received (ws_scan) */
    uint8_t hdr_len;
    uint8_t msg_open;           /* a fragmented message is being received */
    uint64_t payload_left;      /* bytes of the current frame's payload to come */
    const uint8_t *in;          /* bytes wslay is reading, during ws_feed */
    size_t in_len;
    buf_t out;                  /* bytes waiting to be written */
    buf_t wbuf;                 /* bytes of the write in flight */
    uv_write_t wreq;
    uv_shutdown_t sreq;
    uint64_t created_ms;
    uint64_t last_seen_ms;      /* last byte from the peer */
    uint64_t last_io_ms;        /* last byte either way (frees idle wslay state) */
    uint64_t next_ping_ms;
    uint64_t close_deadline_ms;
    uint32_t peer_ip;           /* IPv4 in network order, 0 for others and
                                 * when not counted in the per-IP limit */
    session_t sess;
} conn_t;

/* Accepts one connection from the listener into a new conn. Returns 0 or
 * a negative libuv error. */
int conn_accept(worker_t *w, uv_stream_t *listener);

/* Keeps c's memory alive across an asynchronous call; the callback checks
 * c->state before using it and then calls conn_unref(). */
void conn_ref(conn_t *c);
void conn_unref(conn_t *c);

/* Queues output for the next flush. */
void conn_mark_dirty(conn_t *c);

/* Writes whatever is queued; called by the worker before each poll. */
void conn_flush(conn_t *c);

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

/* The worker's once-a-second housekeeping for this conn (timeouts, pings). */
void conn_tick(conn_t *c, uint64_t now_ms);

#endif
