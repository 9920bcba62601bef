/*
 * net: the transport wing of a worker, and its whole door. It accepts TCP
 * connections, reads the HTTP request (llhttp), checks the upgrade and the
 * caller's identity, frames WebSocket (wslay), serves the browser client's
 * static files, and writes every connection's output once per loop
 * iteration. It knows nothing of sessions or rooms.
 *
 * Upward, it reports through handler tables set once at start (as nginx
 * hands events to c->read->handler): the session layer's (a connection was
 * upgraded, a text message arrived, the session is over) and the server's
 * (an HTTP path net does not serve itself, a connection's memory went
 * back). Downward it offers conn_send_text(), conn_close(),
 * conn_pending_bytes() (conn.h).
 *
 * The upper layer's per-connection state lives in the same allocation as
 * the conn: net_t.conn_size bytes per connection, with conn_t first, so
 * the owner recovers its struct with container_of and pays no second
 * allocation per connection.
 */
#ifndef CHATD_NET_H
#define CHATD_NET_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "../../common/config.h"
#include "../../common/metrics.h"
#include "../../common/pool.h"
#include "auth.h"
#include "deflate.h"
#include "http.h"
#include "iplimit.h"
#include "tls.h"

typedef struct conn_s conn_t;

typedef struct net_handlers_s {
    /* The upgrade was accepted and the 101 queued: the session starts and
     * takes ownership of *auth. */
    void (*opened)(void *ud, conn_t *c, auth_t *auth);
    /* One complete, UTF-8-valid text message. */
    void (*text)(void *ud, conn_t *c, const char *text, size_t len);
    /* The session is over (close frame, error, abort); called once, before
     * any conn_close() of the handler itself returns. */
    void (*closed)(void *ud, conn_t *c);
} net_handlers_t;

typedef struct net_hooks_s {
    /* A request for a path other than /ws, any method, before the
     * browser client's files. Returns 1 when it answered (conn_http_reply)
     * or took the request over (conn_exchange_begin), 0 to let net serve
     * the client's files or answer 404 or 405. May be NULL. */
    int (*http)(void *ud, conn_t *c, const char *path, const char *query);
    /* A conn's memory went back to the pool (the worker may be drained). */
    void (*freed)(void *ud);
} net_hooks_t;

typedef struct net_s {
    uv_loop_t *loop;
    const config_t *cfg;
    metrics_slot_t *metrics;    /* this worker's slot of the shared page */
    const net_handlers_t *h;
    void *ud;                   /* the handlers' first argument */
    const net_hooks_t *hooks;
    void *hooks_ud;
    size_t conn_size;           /* bytes per conn, conn_t first */
    conn_t *conns;              /* every open conn */
    size_t nconns;
    conn_t *dirty;              /* conns with output to flush */
    pool_t conns_pool;          /* conn memory, conn_size bytes each */
    size_t idle_released;       /* wslay contexts freed since the last trim */
    iplimit_t per_ip;           /* connections per client address */
    http_req_t *http_cache;     /* request parsers kept for reuse */
    uint32_t http_cached;
    const uint8_t *in;          /* bytes wslay is reading, during ws_feed */
    size_t in_len;
    int deflate_on;             /* --deflate, and zlib is set up */
    deflate_t deflate;          /* the worker's one stream each way */
    buf_t inflated;             /* the message being inflated */
    tls_t *tls;                 /* the TLS port's server, or NULL */
    /* Scratch space, not cleared by net_init (readbuf first). */
    char readbuf[64 * 1024];    /* one read buffer for every conn */
    uint8_t tls_plain[16384];   /* one TLS record's plaintext, as it is read */
    uint8_t tls_stage[16384];   /* small frames gathered into one record */
} net_t;

/*
 * Prepares n with the session layer's handlers (h, ud) and the server's
 * hooks (hooks, hooks_ud). conn_size is the size of the session layer's
 * per-connection struct (at least sizeof(conn_t), conn_t at offset 0).
 * Nothing is allocated until the first accept.
 */
void net_init(net_t *n, uv_loop_t *loop, const config_t *cfg, metrics_slot_t *metrics,
              const net_handlers_t *h, void *ud, size_t conn_size,
              const net_hooks_t *hooks, void *hooks_ud);

/* Accepts one connection from the listener, a TLS one when tls is set (the
 * TLS port). Returns 0 or a negative libuv error (UV_EAGAIN when there was
 * none after all). */
int net_accept(net_t *n, uv_stream_t *listener, int tls);

/*
 * Serves TLS with pem from now on: the first call sets TLS up, later ones
 * swap the certificate for new handshakes only. Returns 0, or -1 with a
 * message in err (what was there stays).
 */
int net_tls_use(net_t *n, const tls_pem_t *pem, char *err, size_t errlen);

/* Writes every connection's queued output: called once per loop iteration,
 * before the loop blocks. */
void net_flush(net_t *n);

/* Once a second: handshake and heartbeat timeouts, pings, closing
 * deadlines, and the release of idle connections' buffers. */
void net_tick(net_t *n, uint64_t now_ms);

/* Closes up to max upgraded connections with 1001 (a retiring worker).
 * Returns how many it closed. */
int net_close_some(net_t *n, int max);

/* Drops every connection now. */
void net_abort_all(net_t *n);

/* Frees the pool once every conn is closed and its close callback ran. */
void net_free(net_t *n);

#endif
