#include "conn.h"
#include "worker.h"
#include "ws.h"
#include "auth.h"
#include "bus.h"
#include "../common/log.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* How long a closing conn may take to flush and finish the close handshake. */
#define CONN_LINGER_MS 2000

static void conn_on_close(uv_handle_t *h)
{
    conn_t *c = (conn_t *)h;
    worker_t *w = c->w;
    if (c->prev != NULL) {
        c->prev->next = c->next;
    } else {
        w->conns = c->next;
    }
    if (c->next != NULL) {
        c->next->prev = c->prev;
    }
    w->nconns--;
    iplimit_release(&w->per_ip, c->peer_ip);
    c->prev = c->next = NULL;
    ws_stop(c);
    free(c->http);
    c->http = NULL;
    buf_free(&c->out);
    buf_free(&c->wbuf);
    c->handle_closed = 1;
    if (c->refs == 0) {
        worker_conn_release(w, c);
    }
    worker_on_conn_freed(w);
}

void conn_ref(conn_t *c)
{
    c->refs++;
}

void conn_unref(conn_t *c)
{
    if (--c->refs == 0 && c->handle_closed) {
        worker_conn_release(c->w, c);
    }
}

void conn_abort(conn_t *c)
{
    if (c->state == CONN_CLOSED) {
        return;
    }
    if (c->state == CONN_WS) {
        session_end(c);
    }
    c->state = CONN_CLOSED;
    uv_close((uv_handle_t *)&c->tcp, conn_on_close);
}

void conn_close(conn_t *c, uint16_t code, const char *reason)
{
    if (c->state == CONN_CLOSED || c->state == CONN_CLOSING) {
        return;
    }
    if (c->state == CONN_WS) {
        session_end(c);
        if (code == 1013) {
            /* A slow consumer will not read what is queued: the close frame
             * goes out alone. c->out holds only whole frames. */
            buf_free(&c->out);
        }
        if (code != 0 && code != 1013) {
            /* wslay sends control frames ahead of queued messages: move the
             * messages out first, so answers already given (the errors
             * explaining this close, say) still precede the close. */
            ws_drain(c);
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
    c->close_deadline_ms = uv_now(&c->w->loop) + CONN_LINGER_MS;
    conn_mark_dirty(c);
}

size_t conn_pending_bytes(const conn_t *c)
{
    return c->out.len + c->wbuf.len + ws_queued_bytes(c);
}

void conn_mark_dirty(conn_t *c)
{
    if (!c->dirty && c->state != CONN_CLOSED) {
        c->dirty = 1;
        c->dirty_next = c->w->dirty;
        c->w->dirty = c;
    }
}

static void conn_on_write(uv_write_t *req, int status)
{
    conn_t *c = req->data;
    c->writing = 0;
    buf_free(&c->wbuf);
    if (c->state == CONN_CLOSED) {
        return;
    }
    if (status < 0) {
        log_debug("event=write_failed session=%s err=%s", c->sess.id, uv_strerror(status));
        conn_abort(c);
        return;
    }
    conn_flush(c);
}

static void conn_on_shutdown(uv_shutdown_t *req, int status)
{
    (void)req;
    (void)status;
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
    if (uv_shutdown(&c->sreq, (uv_stream_t *)&c->tcp, conn_on_shutdown) != 0) {
        conn_abort(c);
    }
}

/* Whether a closing conn is done: all written, and the peer said goodbye
 * (or never spoke WebSocket). */
static int conn_drained(const conn_t *c)
{
    return !c->writing && c->out.len == 0 && (c->fail_fast || ws_finished(c));
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
    if (!c->writing && c->out.len > 0) {
        uv_buf_t b = uv_buf_init(c->out.data, (unsigned int)c->out.len);
        int n = uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
        if (n < 0 && n != UV_EAGAIN) {
            conn_abort(c);
            return;
        }
        if (n > 0) {
            buf_consume(&c->out, (size_t)n);
        }
        if (c->out.len > 0) {
            /* The rest goes by uv_write, which needs the bytes to stay put:
             * they move to wbuf and new output collects in out. */
            c->wbuf = c->out;
            memset(&c->out, 0, sizeof(c->out));
            b = uv_buf_init(c->wbuf.data, (unsigned int)c->wbuf.len);
            c->wreq.data = c;
            int rc = uv_write(&c->wreq, (uv_stream_t *)&c->tcp, &b, 1, conn_on_write);
            if (rc != 0) {
                conn_abort(c);
                return;
            }
            c->writing = 1;
        } else if (c->out.cap > 4096) {
            buf_free(&c->out);  /* idle conns keep no big buffers */
        }
    }
    if (c->shut_after_write && !c->lingering && conn_drained(c)) {
        conn_finish(c);
    }
}

void conn_http_reply(conn_t *c, int status, const char *content_type,
                     const char *extra_headers, const char *body, size_t len)
{
    char head[2048];
    int n = http_response_head(head, sizeof(head), status, content_type, extra_headers, len);
    if (n < 0 || buf_append(&c->out, head, (size_t)n) != 0 || buf_append(&c->out, body, len) != 0) {
        conn_abort(c);
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
    *buf = uv_buf_init(c->w->readbuf, sizeof(c->w->readbuf));
}

static void conn_upgrade(conn_t *c, const char *query, const uint8_t *rest, size_t rest_len)
{
    worker_t *w = c->w;
    const char *why = NULL;
    http_req_t *req = c->http;
    if (http_req_check_upgrade(req, &why) != 0) {
        worker_count_upgrade(w, 0);
        conn_http_reply(c, 400, "text/plain", "Sec-WebSocket-Version: 13\r\n", why, strlen(why));
        return;
    }
    auth_t auth;
    if (auth_check(query, w->cfg->jwt_secret, (int64_t)time(NULL), &auth, &why) != 0) {
        worker_count_upgrade(w, 0);
        log_debug("event=auth_refused reason=\"%s\"", why);
        conn_http_reply(c, 401, "text/plain", NULL, why, strlen(why));
        return;
    }
    char accept[29];
    char head[256];
    int n = -1;
    if (http_ws_accept(req->ws_key, accept) == 0) {
        n = snprintf(head, sizeof(head),
                     "HTTP/1.1 101 Switching Protocols\r\n"
                     "Upgrade: websocket\r\n"
                     "Connection: Upgrade\r\n"
                     "Sec-WebSocket-Accept: %s\r\n\r\n", accept);
    }
    if (n < 0 || buf_append(&c->out, head, (size_t)n) != 0 || ws_start(c) != 0) {
        auth_free(&auth);
        conn_abort(c);
        return;
    }
    free(c->http);
    c->http = NULL;
    c->state = CONN_WS;
    /* The kernel's send buffer would otherwise grow to megabytes before
     * the outbound limit, which counts only chatd's own queue, ever sees a
     * slow consumer. */
    int sndbuf = w->cfg->outbound_limit / 2;
    sndbuf = sndbuf < 16384 ? 16384 : sndbuf > (1 << 20) ? (1 << 20) : sndbuf;
    uv_send_buffer_size((uv_handle_t *)&c->tcp, &sndbuf);
    uint64_t now = uv_now(&w->loop);
    c->last_seen_ms = now;
    c->last_io_ms = now;
    c->next_ping_ms = now + (uint64_t)w->cfg->heartbeat * 1000;
    worker_count_upgrade(w, 1);
    session_start(c, &auth);
    conn_mark_dirty(c);
    if (rest_len > 0 && c->state == CONN_WS) {
        ws_feed(c, rest, rest_len);
    }
}

static void conn_on_request(conn_t *c, const uint8_t *rest, size_t rest_len)
{
    const char *path, *query;
    http_req_split(c->http, &path, &query);
    worker_t *w = c->w;
    int get = c->http->method == HTTP_GET || c->http->method == HTTP_HEAD;

    if (strcmp(path, "/ws") == 0) {
        conn_upgrade(c, query, rest, rest_len);
        return;
    }
    if (strcmp(path, "/healthz") == 0 && get) {
        if (bus_healthy(w->bus)) {
            conn_http_reply(c, 200, "text/plain", "Cache-Control: no-store\r\n", "ok\n", 3);
        } else {
            conn_http_reply(c, 503, "text/plain", "Cache-Control: no-store\r\n",
                            "redis unavailable\n", 18);
        }
        return;
    }
    if (!get) {
        conn_http_reply(c, 405, "text/plain", "Allow: GET\r\n", "method not allowed\n", 19);
        return;
    }
    if (worker_serve_http(w, c, path)) {
        return;
    }
    conn_http_reply(c, 404, "text/plain", NULL, "not found\n", 10);
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
    const uint8_t *data = (const uint8_t *)buf->base;
    size_t len = (size_t)nread;
    c->last_seen_ms = uv_now(&c->w->loop);

    switch (c->state) {
    case CONN_HTTP: {
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

int conn_accept(worker_t *w, uv_stream_t *listener)
{
    conn_t *c = worker_conn_alloc(w);
    if (c == NULL) {
        return UV_ENOMEM;
    }
    c->w = w;
    int rc = uv_tcp_init(&w->loop, &c->tcp);
    if (rc != 0) {
        worker_conn_release(w, c);
        return rc;
    }
    /* From here the handle exists: every exit goes through uv_close. */
    c->next = w->conns;
    if (w->conns != NULL) {
        w->conns->prev = c;
    }
    w->conns = c;
    w->nconns++;
    c->created_ms = uv_now(&w->loop);
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
        w->cfg->max_conns_per_ip > 0) {
        uint32_t ip = ((struct sockaddr_in *)&ss)->sin_addr.s_addr;
        if (iplimit_acquire(&w->per_ip, ip, (uint32_t)w->cfg->max_conns_per_ip) != 0) {
            /* Over the cap: a short answer, without reading the request. */
            static const char busy[] = "HTTP/1.1 429 Too Many Requests\r\nContent-Length: 0\r\n"
                                       "Connection: close\r\n\r\n";
            uv_buf_t b = uv_buf_init((char *)busy, sizeof(busy) - 1);
            uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
            log_debug("event=per_ip_limit");
            conn_abort(c);
            return 0;
        }
        c->peer_ip = ip;
    }
    c->http = malloc(sizeof(*c->http));
    if (c->http == NULL) {
        conn_abort(c);
        return UV_ENOMEM;
    }
    http_req_init(c->http);
    uv_tcp_nodelay(&c->tcp, 1);
    rc = uv_read_start((uv_stream_t *)&c->tcp, conn_on_alloc, conn_on_read);
    if (rc != 0) {
        conn_abort(c);
        return rc;
    }
    return 0;
}

void conn_tick(conn_t *c, uint64_t now)
{
    uint64_t hb = (uint64_t)c->w->cfg->heartbeat * 1000;
    switch (c->state) {
    case CONN_HTTP:
        if (now - c->created_ms > (uint64_t)c->w->cfg->handshake_timeout * 1000) {
            log_debug("event=handshake_timeout");
            conn_abort(c);
        }
        return;
    case CONN_WS:
        if (now - c->last_seen_ms > 2 * hb) {
            log_debug("event=heartbeat_timeout session=%s", c->sess.id);
            conn_close(c, 1001, "no answer to pings");
            /* A dead peer will not finish the handshake: don't linger. */
            c->close_deadline_ms = now + 200;
            return;
        }
        if (now >= c->next_ping_ms) {
            ws_ping(c);
            c->next_ping_ms = now + hb;
        } else if (now - c->last_io_ms >= 1000) {
            ws_release_if_idle(c);
            if (!c->writing && c->out.len == 0 && c->out.cap > 0) {
                buf_free(&c->out);
            }
        }
        return;
    case CONN_CLOSING:
        if (now >= c->close_deadline_ms) {
            conn_abort(c);
        }
        return;
    default:
        return;
    }
}
