#include "conn.h"
#include "net.h"
#include "ws.h"
#include "web.h"
#include "auth.h"
#include "../../common/log.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* How long a closing conn may take to flush and finish the close handshake. */
#define CONN_LINGER_MS 2000

/* Frames one writev may take: a burst of broadcasts to one member leaves
 * in one call. */
#define CONN_IOV 128

/* A write the socket could not take at once; it points into the frames
 * it pins in the conn's queue. Allocated only for the time it waits. */
struct conn_write_s {
    uv_write_t req;
    size_t bytes;
};

/*
 * A TLS connection's extra state. Its plaintext queues in c->out as on a
 * plain connection (shared frames, the outbound limit, 1013's drop rule
 * all unchanged); the flush encrypts from there into wire, whose bytes go
 * to the socket. Only so much is encrypted ahead of the socket, so a slow
 * reader's backlog stays plaintext, counted where the limit looks.
 */
struct conn_tls_s {
    tls_conn_t *tc;
    outq_t *wire;               /* ciphertext (or a plain refusal) to write */
    uint8_t notified;           /* close_notify was queued */
    uint8_t failed;             /* OpenSSL gave up: input is dropped */
};

/* Ciphertext queued ahead of the socket before encryption waits. */
#define CONN_TLS_WIRE_HIGH (64 * 1024)

/* How many request parsers a worker keeps for reuse. */
#define CONN_HTTP_CACHE 64

/*
 * A request parser (5 KiB) lives only for the handshake. Reusing freed
 * ones keeps a connect storm from leaving a hole per connection in the
 * heap between the long-lived memberships and sessions made meanwhile.
 */
static http_req_t *conn_http_alloc(net_t *n)
{
    http_req_t *r = n->http_cache;
    if (r != NULL) {
        n->http_cache = *(http_req_t **)r;
        n->http_cached--;
    } else if ((r = malloc(sizeof(*r))) == NULL) {
        return NULL;
    }
    http_req_init(r);
    return r;
}

static void conn_http_release(net_t *n, http_req_t *r)
{
    if (r == NULL) {
        return;
    }
    if (n->http_cached >= CONN_HTTP_CACHE) {
        free(r);
        return;
    }
    *(http_req_t **)r = n->http_cache;
    n->http_cache = r;
    n->http_cached++;
}

void conn_free_http_cache(net_t *n)
{
    while (n->http_cache != NULL) {
        http_req_t *next = *(http_req_t **)n->http_cache;
        free(n->http_cache);
        n->http_cache = next;
    }
    n->http_cached = 0;
}

static void conn_on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
static void conn_on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);
static int conn_tls_input_waits(const conn_t *c);
static void conn_tls_pump(conn_t *c);

static void conn_on_close(uv_handle_t *h)
{
    conn_t *c = (conn_t *)h;
    net_t *n = c->net;
    if (c->http != NULL && c->http->exchange != NULL) {
        const conn_exchange_t *x = c->http->exchange;
        c->http->exchange = NULL;
        if (x->gone != NULL) {
            x->gone(c->http->exchange_ud, c);
        }
    }
    if (c->prev != NULL) {
        c->prev->next = c->next;
    } else {
        n->conns = c->next;
    }
    if (c->next != NULL) {
        c->next->prev = c->prev;
    }
    n->nconns--;
    iplimit_release(&n->per_ip, c->peer_ip);
    c->prev = c->next = NULL;
    ws_stop(c);
    conn_http_release(n, c->http);
    c->http = NULL;
    /* Pending write and shutdown callbacks ran (cancelled) before this. */
    outq_clear(&c->out);
    if (c->tls != NULL) {
        outq_clear(&c->tls->wire);
        tls_conn_free(c->tls->tc);
        free(c->tls);
        c->tls = NULL;
    }
    c->handle_closed = 1;
    if (c->refs == 0) {
        pool_release(&n->conns_pool, c);
    }
    n->hooks->freed(n->hooks_ud);
}

void conn_ref(conn_t *c)
{
    c->refs++;
}

void conn_unref(conn_t *c)
{
    if (--c->refs == 0 && c->handle_closed) {
        pool_release(&c->net->conns_pool, c);
    }
}

/* Tells the upper layer, once, that the session is over. The state moves
 * on first, so that a close the handler itself asks for is a no-op. */
static void conn_end_session(conn_t *c, uint8_t next_state)
{
    int was_open = c->state == CONN_WS;
    c->state = next_state;
    if (was_open) {
        c->net->h->closed(c->net->ud, c);
    }
}

void conn_abort(conn_t *c)
{
    if (c->state == CONN_CLOSED) {
        return;
    }
    conn_end_session(c, CONN_CLOSED);
    uv_close((uv_handle_t *)&c->tcp, conn_on_close);
}

void conn_close(conn_t *c, uint16_t code, const char *reason)
{
    if (c->state == CONN_CLOSED || c->state == CONN_CLOSING) {
        return;
    }
    if (c->state == CONN_WS) {
        conn_end_session(c, CONN_CLOSING);
        if (c->state == CONN_CLOSED) {
            return;     /* the handler aborted it */
        }
        if (code == 1013) {
            /* A slow consumer will not read what is queued: the close frame
             * goes out alone, after at most the tail of a frame already
             * partly written. */
            outq_drop_unstarted(c->out);
        }
        if (code != 0) {
            ws_close(c, code, reason);
        }
        /* Closing for bad input "fails" the connection: the peer gets the
         * close frame but no wait for its answer. A going-away close waits
         * for the handshake, so well-behaved clients see a clean close. */
        c->fail_fast = code != 0 && code != 1000 && code != 1001 && code != 1012;
    }
    c->state = CONN_CLOSING;
    c->shut_after_write = 1;
    c->close_deadline_ms = (uint32_t)uv_now(c->net->loop) + CONN_LINGER_MS;
    conn_mark_dirty(c);
}

int conn_send_frame(conn_t *c, wsframe_t *f)
{
    return ws_send_frame(c, f);
}

int conn_send_text(conn_t *c, const char *data, size_t len)
{
    if (c->state != CONN_WS) {
        return -1;
    }
    wsframe_t *f = wsframe_text(data, len, NULL, 0, NULL, 0);
    if (f == NULL) {
        conn_close(c, 1011, "out of memory");
        return -1;
    }
    int rc = ws_send_frame(c, f);
    wsframe_unref(f);
    return rc;
}

/* Queues a frame of two parts of raw bytes. */
static int conn_send_raw2(conn_t *c, const void *a, size_t alen, const void *b, size_t blen)
{
    if (alen + blen == 0) {
        return 0;
    }
    wsframe_t *f = wsframe_new(alen + blen);
    if (f == NULL) {
        conn_abort(c);
        return -1;
    }
    memcpy(f->data, a, alen);
    if (blen > 0) {
        memcpy(f->data + alen, b, blen);
    }
    if (outq_push(&c->out, f) != 0) {
        wsframe_unref(f);
        conn_abort(c);
        return -1;
    }
    conn_mark_dirty(c);
    return 0;
}

int conn_send_raw(conn_t *c, const void *bytes, size_t len)
{
    return conn_send_raw2(c, bytes, len, NULL, 0);
}

/* The queue whose bytes go to the socket as they are. */
static outq_t **conn_wire(conn_t *c)
{
    return c->tls != NULL ? &c->tls->wire : &c->out;
}

/* Bytes not yet written, whichever queue holds them (not wslay's). */
static size_t conn_queued_bytes(const conn_t *c)
{
    return outq_bytes(c->out) + (c->tls != NULL ? outq_bytes(c->tls->wire) : 0);
}

size_t conn_pending_bytes(const conn_t *c)
{
    return conn_queued_bytes(c) + ws_queued_bytes(c);
}

void conn_mark_dirty(conn_t *c)
{
    if (!c->dirty && c->state != CONN_CLOSED) {
        c->dirty = 1;
        c->dirty_next = c->net->dirty;
        c->net->dirty = c;
    }
}

static void conn_on_write(uv_write_t *req, int status)
{
    conn_write_t *wr = (conn_write_t *)req;
    conn_t *c = req->data;
    size_t written = wr->bytes;
    free(wr);
    c->wreq = NULL;
    c->writing = 0;
    outq_t *wire = *conn_wire(c);
    outq_pin(wire, 0);
    if (c->state == CONN_CLOSED) {
        return;
    }
    outq_consume(wire, status == 0 ? written : 0);
    if (status == 0) {
        c->last_io_ms = (uint32_t)uv_now(c->net->loop);
    }
    if (status < 0) {
        log_debug("event=write_failed err=%s", uv_strerror(status));
        conn_abort(c);
        return;
    }
    conn_flush(c);
}

static void conn_on_shutdown(uv_shutdown_t *req, int status)
{
    conn_t *c = req->data;
    (void)status;
    free(req);
    c->sreq = NULL;
}

/*
 * Ends a conn whose output is all written. When the peer may still be
 * sending (an HTTP answer, or a failed WebSocket), closing at once could
 * turn its unread bytes into a reset that destroys our last frame in
 * flight; so send FIN and drop what arrives until its EOF or the deadline
 * (a lingering close).
 */
static void conn_finish(conn_t *c)
{
    if (c->ws != NULL && ws_finished(c)) {
        conn_abort(c);
        return;
    }
    c->lingering = 1;
    c->sreq = malloc(sizeof(*c->sreq));
    if (c->sreq == NULL) {
        conn_abort(c);
        return;
    }
    c->sreq->data = c;
    if (uv_shutdown(c->sreq, (uv_stream_t *)&c->tcp, conn_on_shutdown) != 0) {
        free(c->sreq);
        c->sreq = NULL;
        conn_abort(c);
    }
}

/* Whether a closing conn is done: all written, and the peer said goodbye
 * (or never spoke WebSocket). */
static int conn_drained(const conn_t *c)
{
    return !c->writing && outq_len(c->out) == 0 && (c->tls == NULL || outq_len(c->tls->wire) == 0) &&
           (c->fail_fast || ws_finished(c));
}

/*
 * Encrypts queued plaintext into the wire queue, up to CONN_TLS_WIRE_HIGH
 * ahead of the socket. Small frames (a burst of broadcasts) are gathered
 * into one record rather than paying a record's overhead each; a big one
 * is encrypted where it lies. Returns 0 or -1 (the conn must go).
 */
static int conn_tls_encrypt(conn_t *c)
{
    net_t *n = c->net;
    while (outq_len(c->out) > 0 && outq_bytes(c->tls->wire) < CONN_TLS_WIRE_HIGH) {
        uv_buf_t iov[32];
        int k = outq_iov(c->out, iov, 32);
        const uint8_t *src;
        size_t len;
        if (iov[0].len >= sizeof(n->tls_stage)) {
            src = (const uint8_t *)iov[0].base;
            len = iov[0].len < 4 * sizeof(n->tls_stage) ? iov[0].len : 4 * sizeof(n->tls_stage);
        } else {
            len = 0;
            for (int i = 0; i < k && len < sizeof(n->tls_stage); i++) {
                size_t take = sizeof(n->tls_stage) - len;
                take = iov[i].len < take ? iov[i].len : take;
                memcpy(n->tls_stage + len, iov[i].base, take);
                len += take;
            }
            src = n->tls_stage;
        }
        if (tls_conn_write(c->tls->tc, src, len) != 0) {
            char why[256];
            tls_error(why, sizeof(why));
            log_debug("event=tls_write_failed err=\"%s\"", why);
            return -1;
        }
        outq_consume(c->out, len);
    }
    return 0;
}

void conn_flush(conn_t *c)
{
    if (c->state == CONN_CLOSED) {
        return;
    }
    ws_drain(c);
    if (c->state == CONN_CLOSED) {
        return;
    }
    if (c->tls != NULL) {
        if (conn_tls_encrypt(c) != 0) {
            conn_abort(c);
            return;
        }
        if (conn_tls_input_waits(c)) {
            conn_tls_pump(c);
            if (c->state == CONN_CLOSED) {
                return;
            }
        }
    }
    outq_t **wq = conn_wire(c);
    if (!c->writing && outq_len(*wq) > 0) {
        /* Everything queued goes in one writev; more only when more than
         * CONN_IOV frames wait and the socket took all it was given. */
        uv_buf_t iov[CONN_IOV];
        int n;
        for (;;) {
            n = outq_iov(*wq, iov, CONN_IOV);
            size_t want = 0;
            for (int i = 0; i < n; i++) {
                want += iov[i].len;
            }
            int w = uv_try_write((uv_stream_t *)&c->tcp, iov, (unsigned int)n);
            if (w < 0 && w != UV_EAGAIN) {
                conn_abort(c);
                return;
            }
            if (w > 0) {
                outq_consume(*wq, (size_t)w);
                c->last_io_ms = (uint32_t)uv_now(c->net->loop);
            }
            if (c->tls != NULL && w >= 0 && (size_t)w == want && conn_tls_encrypt(c) != 0) {
                /* The socket took all the ciphertext: more was encrypted. */
                conn_abort(c);
                return;
            }
            if (w < 0 || (size_t)w < want || outq_len(*wq) == 0) {
                break;
            }
        }
        if (outq_len(*wq) > 0) {
            /* The socket is full: libuv writes the rest when it drains.
             * The frames stay in the queue, pinned, so the bytes stay put;
             * new output queues behind them. */
            n = outq_iov(*wq, iov, CONN_IOV);
            conn_write_t *wr = malloc(sizeof(*wr));
            if (wr == NULL) {
                conn_abort(c);
                return;
            }
            wr->bytes = 0;
            for (int i = 0; i < n; i++) {
                wr->bytes += iov[i].len;
            }
            wr->req.data = c;
            if (uv_write(&wr->req, (uv_stream_t *)&c->tcp, iov, (unsigned int)n, conn_on_write) != 0) {
                free(wr);
                conn_abort(c);
                return;
            }
            c->wreq = wr;
            c->writing = 1;
            outq_pin(*wq, (uint32_t)n);
        }
    }
    if (c->shut_after_write && !c->lingering && conn_drained(c)) {
        if (c->tls != NULL && !c->tls->notified) {
            /* A TLS peer learns the end was meant (close_notify) before
             * the FIN; once that is written too, finish. */
            c->tls->notified = 1;
            tls_conn_shutdown(c->tls->tc);
            if (outq_len(c->tls->wire) > 0) {
                conn_flush(c);
                return;
            }
        }
        conn_finish(c);
        return;
    }
    if (c->state == CONN_HTTP && c->http != NULL && c->http->exchange != NULL) {
        const conn_exchange_t *x = c->http->exchange;
        if (x->writable != NULL && conn_queued_bytes(c) < CONN_STREAM_LOW) {
            x->writable(c->http->exchange_ud, c);
        }
    }
}

const http_req_t *conn_request(const conn_t *c)
{
    return c->state == CONN_HTTP ? c->http : NULL;
}

void conn_exchange_begin(conn_t *c, const conn_exchange_t *x, void *ud)
{
    if (c->state != CONN_HTTP || c->http == NULL) {
        return;
    }
    c->http->exchange = x;
    c->http->exchange_ud = ud;
    c->last_io_ms = c->last_seen_ms = (uint32_t)uv_now(c->net->loop);
}

void conn_exchange_end(conn_t *c)
{
    if (c->http != NULL) {
        c->http->exchange = NULL;
        c->http->on_body = NULL;
    }
}

static int conn_on_body(void *ud, const char *data, size_t len)
{
    conn_t *c = ud;
    const conn_exchange_t *x = c->http->exchange;
    if (x == NULL || x->body == NULL) {
        return -1;
    }
    return x->body(c->http->exchange_ud, c, data, len);
}

int conn_body_read(conn_t *c)
{
    if (c->state != CONN_HTTP || c->http == NULL || !c->http->has_body || c->http->exchange == NULL) {
        return -1;
    }
    c->http->on_body = conn_on_body;
    c->http->body_ud = c;
    if (http_req_expects_continue(c->http)) {
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        return conn_send_raw(c, cont, sizeof(cont) - 1);
    }
    return 0;
}

void conn_body_pause(conn_t *c, int paused)
{
    if (c->state != CONN_HTTP || c->http == NULL || c->http->body_paused == paused) {
        return;
    }
    c->http->body_paused = paused;
    if (paused) {
        uv_read_stop((uv_stream_t *)&c->tcp);
        return;
    }
    /* The stall clock starts again: the wait was ours, not the peer's. */
    c->last_seen_ms = (uint32_t)uv_now(c->net->loop);
    if (uv_read_start((uv_stream_t *)&c->tcp, conn_on_alloc, conn_on_read) != 0) {
        conn_abort(c);
        return;
    }
    if (c->tls != NULL && tls_conn_has_input(c->tls->tc)) {
        /* Decrypted on the next flush, not inside the reader's call. */
        conn_mark_dirty(c);
    }
}

/* Body bytes of an exchange's request. A malformed body is answered 400
 * here, after the owner heard it is gone. */
static void conn_feed_body(conn_t *c, const uint8_t *data, size_t len)
{
    http_req_t *req = c->http;
    if (req->on_body == NULL) {
        return;         /* not asked for, or no longer wanted: dropped */
    }
    http_status_t st = http_req_body(req, (const char *)data, len);
    if (c->state != CONN_HTTP || c->http == NULL || req->exchange == NULL) {
        return;         /* the owner answered or the conn went meanwhile */
    }
    const conn_exchange_t *x = req->exchange;
    if (st == HTTP_DONE) {
        req->on_body = NULL;
        if (x->body_end != NULL) {
            x->body_end(req->exchange_ud, c);
        }
    } else if (st == HTTP_BAD) {
        req->exchange = NULL;
        req->on_body = NULL;
        if (x->gone != NULL) {
            x->gone(req->exchange_ud, c);
        }
        conn_http_reply(c, 400, "text/plain", NULL, "malformed request body\n", 23);
    }
}

void conn_http_reply(conn_t *c, int status, const char *content_type,
                     const char *extra_headers, const char *body, size_t len)
{
    char head[2048];
    int n = http_response_head(head, sizeof(head), status, content_type, extra_headers, len);
    if (n < 0) {
        conn_abort(c);
        return;
    }
    if (conn_send_raw2(c, head, (size_t)n, body, len) != 0) {
        return;
    }
    conn_close(c, 0, NULL);
}

static void conn_on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    conn_t *c = (conn_t *)h;
    /* One read buffer per worker: its bytes are consumed before the next
     * read, so idle connections hold no read memory. */
    *buf = uv_buf_init(c->net->readbuf, sizeof(c->net->readbuf));
}

static void conn_upgrade(conn_t *c, const char *query, const uint8_t *rest, size_t rest_len)
{
    net_t *n = c->net;
    const char *why = NULL;
    http_req_t *req = c->http;
    if (http_req_check_upgrade(req, &why) != 0) {
        metrics_add(&n->metrics->upgrades_refused, 1);
        conn_http_reply(c, 400, "text/plain", "Sec-WebSocket-Version: 13\r\n", why, strlen(why));
        return;
    }
    auth_t auth;
    if (auth_check_request(query, req->authorization, n->cfg->jwt_secret, (int64_t)time(NULL), &auth,
                           &why) != 0) {
        metrics_add(&n->metrics->upgrades_refused, 1);
        log_debug("event=auth_refused reason=\"%s\"", why);
        conn_http_reply(c, 401, "text/plain", NULL, why, strlen(why));
        return;
    }
    char accept[29];
    char head[256];
    int hlen = -1;
    if (http_ws_accept(req->ws_key, accept) == 0) {
        c->deflate = n->deflate_on && deflate_negotiate(req->ws_extensions);
        hlen = snprintf(head, sizeof(head),
                     "HTTP/1.1 101 Switching Protocols\r\n"
                     "Upgrade: websocket\r\n"
                     "Connection: Upgrade\r\n"
                     "Sec-WebSocket-Accept: %s\r\n%s\r\n", accept, c->deflate ? DEFLATE_RESPONSE : "");
    }
    if (hlen < 0 || ws_start(c) != 0 || conn_send_raw(c, head, (size_t)hlen) != 0) {
        auth_free(&auth);
        conn_abort(c);
        return;
    }
    conn_http_release(n, c->http);
    c->http = NULL;
    c->state = CONN_WS;
    /* The kernel's send buffer would otherwise grow to megabytes before
     * the outbound limit, which counts only chatd's own queue, ever sees a
     * slow consumer. */
    int sndbuf = n->cfg->outbound_limit / 2;
    sndbuf = sndbuf < 16384 ? 16384 : sndbuf > (1 << 20) ? (1 << 20) : sndbuf;
    uv_send_buffer_size((uv_handle_t *)&c->tcp, &sndbuf);
    uint64_t now = uv_now(n->loop);
    c->last_seen_ms = (uint32_t)now;
    c->last_io_ms = (uint32_t)now;
    c->next_ping_ms = (uint32_t)now + (uint32_t)n->cfg->heartbeat * 1000u;
    metrics_add(&n->metrics->upgrades, 1);
    n->h->opened(n->ud, c, &auth);
    conn_mark_dirty(c);
    if (rest_len > 0 && c->state == CONN_WS) {
        ws_feed(c, rest, rest_len);
    }
}

static void conn_on_request(conn_t *c, const uint8_t *rest, size_t rest_len)
{
    const char *path, *query;
    http_req_split(c->http, &path, &query);
    net_t *n = c->net;
    int get = c->http->method == HTTP_GET || c->http->method == HTTP_HEAD;

    if (strcmp(path, "/ws") == 0) {
        conn_upgrade(c, query, rest, rest_len);
        return;
    }
    if (n->hooks->http != NULL && n->hooks->http(n->hooks_ud, c, path, query)) {
        /* Body bytes that came with the headers go to an exchange that
         * asked for them; fed even when none came, so that an empty body
         * completes now. */
        if (c->state == CONN_HTTP && c->http != NULL && c->http->on_body != NULL) {
            conn_feed_body(c, rest, rest_len);
        }
        return;
    }
    if (!get) {
        conn_http_reply(c, 405, "text/plain", "Allow: GET\r\n", "method not allowed\n", 19);
        return;
    }
    if (web_serve(c, path)) {
        return;
    }
    conn_http_reply(c, 404, "text/plain", NULL, "not found\n", 10);
}

/* Bytes from the peer (decrypted, on the TLS port). */
static void conn_on_bytes(conn_t *c, const uint8_t *data, size_t len)
{
    switch (c->state) {
    case CONN_HTTP: {
        if (c->http->complete) {
            conn_feed_body(c, data, len);
            return;
        }
        size_t used = 0;
        http_status_t st = http_req_feed(c->http, (const char *)data, len, &used);
        if (st == HTTP_DONE) {
            conn_on_request(c, data + used, len - used);
        } else if (st == HTTP_BAD) {
            conn_http_reply(c, 400, "text/plain", NULL, "bad request\n", 12);
        } else if (st == HTTP_TOO_BIG) {
            conn_http_reply(c, 431, "text/plain", NULL, "request headers too large\n", 26);
        }
        return;
    }
    case CONN_WS:
    case CONN_CLOSING:
        /* After an HTTP answer (no ws) the peer's bytes are ignored. */
        if (c->state == CONN_WS || c->ws != NULL) {
            ws_feed(c, data, len);
        }
        return;
    default:
        return;
    }
}

/* Whether a TLS conn has input it stopped reading (an upload paused for
 * its store) and may read now. */
static int conn_tls_input_waits(const conn_t *c)
{
    if (c->state == CONN_CLOSED || c->lingering || c->tls->failed || !tls_conn_has_input(c->tls->tc)) {
        return 0;
    }
    return !(c->state == CONN_HTTP && c->http != NULL && c->http->body_paused);
}

/* A connection on the TLS port answered in plain HTTP, which it speaks. */
static void conn_tls_refuse_plain(conn_t *c)
{
    static const char body[] = "This port speaks TLS: use https:// or wss:// addresses.\n";
    char msg[256];
    int len = snprintf(msg, sizeof(msg),
                       "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n"
                       "Connection: close\r\n\r\n%s", sizeof(body) - 1, body);
    wsframe_t *f = len > 0 && (size_t)len < sizeof(msg) ? wsframe_raw(msg, (size_t)len) : NULL;
    if (f == NULL || outq_push(&c->tls->wire, f) != 0) {
        wsframe_unref(f);
        conn_abort(c);
        return;
    }
    conn_close(c, 0, NULL);
}

/*
 * Decrypts what the TLS conn has and hands it on as a plain conn's bytes,
 * until it runs out or the reader pauses. A failed handshake or bad record
 * ends only this conn: during the handshake the alert OpenSSL wrote goes
 * out before the close; later there is no session left to answer.
 */
static void conn_tls_pump(conn_t *c)
{
    net_t *n = c->net;
    tls_conn_t *tc = c->tls->tc;
    int was_up = tls_conn_established(tc);
    for (;;) {
        if (c->state == CONN_CLOSED || c->lingering || c->tls->failed) {
            return;
        }
        if (c->state == CONN_HTTP && c->http != NULL && c->http->body_paused) {
            break;
        }
        int r = tls_conn_read(tc, n->tls_plain, sizeof(n->tls_plain));
        if (!was_up && tls_conn_established(tc)) {
            was_up = 1;
            metrics_add(&n->metrics->tls_handshakes, 1);
        }
        if (r > 0) {
            conn_on_bytes(c, n->tls_plain, (size_t)r);
            continue;
        }
        if (r == TLS_AGAIN) {
            break;
        }
        if (r == TLS_EOF) {
            conn_abort(c);      /* close_notify: as a TCP EOF */
            return;
        }
        c->tls->failed = 1;
        if (!was_up) {
            metrics_add(&n->metrics->tls_failures, 1);
        }
        if (r == TLS_PLAINTEXT) {
            log_debug("event=tls_plain_request");
            conn_tls_refuse_plain(c);
            return;
        }
        char why[256];
        tls_error(why, sizeof(why));
        log_debug("event=tls_failed handshake=%s err=\"%s\"", was_up ? "done" : "failed", why);
        if (c->state == CONN_HTTP) {
            conn_close(c, 0, NULL);
        } else {
            conn_abort(c);
        }
        return;
    }
    if (tls_conn_input_done(tc) != 0) {
        conn_abort(c);
        return;
    }
    if (outq_len(c->tls->wire) > 0 || outq_len(c->out) > 0) {
        conn_mark_dirty(c);
    }
}

static void conn_on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    conn_t *c = (conn_t *)s;
    if (nread == 0) {
        return;
    }
    if (nread < 0) {
        /* EOF or reset: nobody is left to read a close frame. */
        conn_abort(c);
        return;
    }
    if (c->lingering) {
        return;
    }
    c->last_seen_ms = (uint32_t)uv_now(c->net->loop);
    if (c->tls != NULL) {
        tls_conn_input(c->tls->tc, (const uint8_t *)buf->base, (size_t)nread);
        conn_tls_pump(c);
        return;
    }
    conn_on_bytes(c, (const uint8_t *)buf->base, (size_t)nread);
}

/* Ciphertext OpenSSL wrote, on its way to the socket. */
static int conn_tls_out(void *ud, const uint8_t *bytes, size_t len)
{
    conn_t *c = ud;
    wsframe_t *f = wsframe_raw(bytes, len);
    if (f == NULL) {
        return -1;
    }
    if (outq_push(&c->tls->wire, f) != 0) {
        wsframe_unref(f);
        return -1;
    }
    return 0;
}

static int conn_tls_start(conn_t *c)
{
    c->tls = calloc(1, sizeof(*c->tls));
    if (c->tls == NULL) {
        return -1;
    }
    c->tls->tc = tls_conn_new(c->net->tls, conn_tls_out, c);
    return c->tls->tc != NULL ? 0 : -1;
}

int conn_accept(net_t *n, uv_stream_t *listener, int tls)
{
    conn_t *c = pool_alloc(&n->conns_pool);
    if (c == NULL) {
        return UV_ENOMEM;
    }
    c->net = n;
    int rc = uv_tcp_init(n->loop, &c->tcp);
    if (rc != 0) {
        pool_release(&n->conns_pool, c);
        return rc;
    }
    /* From here the handle exists: every exit goes through uv_close. */
    c->next = n->conns;
    if (n->conns != NULL) {
        n->conns->prev = c;
    }
    n->conns = c;
    n->nconns++;
    c->created_ms = (uint32_t)uv_now(n->loop);
    c->state = CONN_HTTP;
    rc = uv_accept(listener, (uv_stream_t *)&c->tcp);
    if (rc != 0) {
        c->state = CONN_CLOSED;
        uv_close((uv_handle_t *)&c->tcp, conn_on_close);
        return rc;
    }
    struct sockaddr_storage ss;
    int sslen = sizeof(ss);
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &sslen) == 0 && ss.ss_family == AF_INET &&
        n->cfg->max_conns_per_ip > 0) {
        uint32_t ip = ((struct sockaddr_in *)&ss)->sin_addr.s_addr;
        if (iplimit_acquire(&n->per_ip, ip, (uint32_t)n->cfg->max_conns_per_ip) != 0) {
            /* Over the cap: a short answer, without reading the request
             * (on the TLS port, no handshake is spent on it). */
            static const char busy[] = "HTTP/1.1 429 Too Many Requests\r\nContent-Length: 0\r\n"
                                       "Connection: close\r\n\r\n";
            uv_buf_t b = uv_buf_init((char *)busy, sizeof(busy) - 1);
            if (!tls) {
                uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
            }
            log_debug("event=per_ip_limit");
            conn_abort(c);
            return 0;
        }
        c->peer_ip = ip;
    }
    c->http = conn_http_alloc(n);
    if (c->http == NULL || (tls && conn_tls_start(c) != 0)) {
        conn_abort(c);
        return UV_ENOMEM;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    rc = uv_read_start((uv_stream_t *)&c->tcp, conn_on_alloc, conn_on_read);
    if (rc != 0) {
        conn_abort(c);
        return rc;
    }
    return 0;
}

/* Whether the 32-bit time t has come at now. */
static int conn_due(uint32_t now, uint32_t t)
{
    return (int32_t)(now - t) >= 0;
}

void conn_tick(conn_t *c, uint64_t now_ms)
{
    uint32_t now = (uint32_t)now_ms;
    const config_t *cfg = c->net->cfg;
    uint32_t hb = (uint32_t)cfg->heartbeat * 1000u;
    switch (c->state) {
    case CONN_HTTP:
        if (c->http != NULL && c->http->exchange != NULL) {
            uint32_t limit = (uint32_t)cfg->handshake_timeout * 1000u;
            if (c->http->on_body != NULL && !c->http->body_paused && now - c->last_seen_ms > limit) {
                log_info("event=http_body_stalled");
                conn_abort(c);
            } else if (conn_queued_bytes(c) > 0 && now - c->last_io_ms > limit) {
                log_info("event=http_reader_stalled");
                conn_abort(c);
            }
            return;
        }
        if (now - c->created_ms > (uint32_t)cfg->handshake_timeout * 1000u) {
            log_debug("event=handshake_timeout");
            conn_abort(c);
        }
        return;
    case CONN_WS:
        if (now - c->last_seen_ms > 2 * hb) {
            log_debug("event=heartbeat_timeout");
            conn_close(c, 1001, "no answer to pings");
            /* A dead peer will not finish the handshake: don't linger. */
            c->close_deadline_ms = now + 200;
            return;
        }
        if (conn_due(now, c->next_ping_ms)) {
            ws_ping(c);
            c->next_ping_ms = now + hb;
        } else if (now - c->last_io_ms >= 1000) {
            ws_release_if_idle(c);
            outq_trim(&c->out);
            if (c->tls != NULL) {
                outq_trim(&c->tls->wire);
            }
        }
        return;
    case CONN_CLOSING:
        if (conn_due(now, c->close_deadline_ms)) {
            conn_abort(c);
        }
        return;
    default:
        return;
    }
}
