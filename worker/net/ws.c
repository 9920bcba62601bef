#include "ws.h"
#include "conn.h"
#include "net.h"
#include "../../common/log.h"
#include "../../proto/proto.h"

#include <string.h>

static ssize_t ws_on_recv(wslay_event_context_ptr ctx, uint8_t *buf, size_t len,
                          int flags, void *user_data)
{
    (void)flags;
    net_t *n = ((conn_t *)user_data)->net;
    if (n->in_len == 0) {
        wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
        return -1;
    }
    size_t k = len < n->in_len ? len : n->in_len;
    memcpy(buf, n->in, k);
    n->in += k;
    n->in_len -= k;
    return (ssize_t)k;
}

static ssize_t ws_on_send(wslay_event_context_ptr ctx, const uint8_t *data, size_t len,
                          int flags, void *user_data)
{
    (void)flags;
    conn_t *c = user_data;
    /* wslay frames only control frames here (pong, ping, close); they join
     * the conn's queue at once, behind what is already queued, so wslay
     * never holds half a frame and the conn alone decides when bytes hit
     * the socket. */
    if (conn_send_raw(c, data, len) != 0) {
        wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
        return -1;
    }
    return (ssize_t)len;
}

static void ws_on_frame_start(wslay_event_context_ptr ctx,
                              const struct wslay_event_on_frame_recv_start_arg *arg,
                              void *user_data)
{
    conn_t *c = user_data;
    (void)ctx;
    /* ws_scan refuses binary frames at their header; a binary frame can
     * only get here if that check is ever bypassed. */
    if (c->state == CONN_WS && arg->opcode == WSLAY_BINARY_FRAME) {
        conn_close(c, WSLAY_CODE_UNSUPPORTED_DATA, "binary frames are not accepted");
    }
}

static void ws_on_msg(wslay_event_context_ptr ctx, const struct wslay_event_on_msg_recv_arg *arg,
                      void *user_data)
{
    conn_t *c = user_data;
    (void)ctx;
    if (c->state != CONN_WS) {
        return;
    }
    switch (arg->opcode) {
    case WSLAY_TEXT_FRAME: {
        const uint8_t *msg = arg->msg;
        size_t len = arg->msg_length;
        if (arg->rsv & WSLAY_RSV1_BIT) {
            /* Compressed (only when negotiated: wslay refuses RSV1
             * otherwise). The limit holds for what it inflates to. */
            net_t *n = c->net;
            int rc = deflate_inflate(&n->deflate, msg, len, (size_t)n->cfg->max_message, &n->inflated);
            if (rc == -1) {
                conn_close(c, WSLAY_CODE_MESSAGE_TOO_BIG, "message too big once inflated");
                return;
            }
            if (rc != 0) {
                conn_close(c, WSLAY_CODE_INVALID_FRAME_PAYLOAD_DATA, "invalid compressed data");
                return;
            }
            msg = (const uint8_t *)n->inflated.data;
            len = n->inflated.len;
        }
        if (!proto_utf8_valid(msg, len)) {
            conn_close(c, WSLAY_CODE_INVALID_FRAME_PAYLOAD_DATA, "invalid UTF-8");
            return;
        }
        c->net->h->text(c->net->ud, c, (const char *)msg, len);
        return;
    }
    case WSLAY_BINARY_FRAME:
        conn_close(c, WSLAY_CODE_UNSUPPORTED_DATA, "binary frames are not accepted");
        return;
    case WSLAY_CONNECTION_CLOSE:
        /* wslay has queued the echoing close frame; the session ends now. */
        conn_close(c, 0, NULL);
        return;
    default:
        return;         /* ping (answered by wslay) and pong only count as liveness */
    }
}

int ws_start(conn_t *c)
{
    static const struct wslay_event_callbacks callbacks = {
        .recv_callback = ws_on_recv,
        .send_callback = ws_on_send,
        .on_frame_recv_start_callback = ws_on_frame_start,
        .on_msg_recv_callback = ws_on_msg,
    };
    if (wslay_event_context_server_init(&c->ws, &callbacks, c) != 0) {
        c->ws = NULL;
        return -1;
    }
    wslay_event_config_set_max_recv_msg_length(c->ws, (uint64_t)c->net->cfg->max_message);
    if (c->deflate) {
        wslay_event_config_set_allowed_rsv_bits(c->ws, WSLAY_RSV1_BIT);
    }
    return 0;
}

static int ws_ensure(conn_t *c)
{
    if (c->ws != NULL) {
        return 0;
    }
    if (ws_start(c) != 0) {
        conn_abort(c);
        return -1;
    }
    return 0;
}

void ws_release_if_idle(conn_t *c)
{
    if (c->ws != NULL && c->state == CONN_WS && c->hdr_len == 0 && c->payload_left == 0 &&
        !c->msg_open && !wslay_event_want_write(c->ws) &&
        wslay_event_get_queued_msg_count(c->ws) == 0) {
        ws_stop(c);
        c->net->idle_released++;
    }
}

void ws_stop(conn_t *c)
{
    if (c->ws != NULL) {
        wslay_event_context_free(c->ws);
        c->ws = NULL;
    }
}

/*
 * Follows frame boundaries in the incoming bytes, ahead of wslay, to judge
 * each frame by its header: wslay only reports a frame once payload bytes
 * arrive, and a header declaring a huge length must be refused at once.
 * Returns how many bytes may go to wslay; sets *code when the connection
 * must close (the offending frame is never fed).
 */
static size_t ws_scan(conn_t *c, const uint8_t *data, size_t len, uint16_t *code)
{
    size_t i = 0;
    size_t frame_start = 0;
    *code = 0;
    while (i < len) {
        if (c->payload_left > 0) {
            uint64_t n = c->payload_left < len - i ? c->payload_left : len - i;
            c->payload_left -= n;
            i += (size_t)n;
            continue;
        }
        if (c->hdr_len == 0) {
            frame_start = i;
        }
        c->hdr[c->hdr_len++] = data[i++];
        if (c->hdr_len < 2) {
            continue;
        }
        uint8_t len7 = c->hdr[1] & 0x7f;
        size_t need = 2 + (len7 == 126 ? 2 : len7 == 127 ? 8 : 0) + ((c->hdr[1] & 0x80) ? 4 : 0);
        if (c->hdr_len < need) {
            continue;
        }
        uint64_t plen = len7;
        if (len7 == 126) {
            plen = ((uint64_t)c->hdr[2] << 8) | c->hdr[3];
        } else if (len7 == 127) {
            plen = 0;
            for (int k = 2; k < 10; k++) {
                plen = (plen << 8) | c->hdr[k];
            }
        }
        uint8_t opcode = c->hdr[0] & 0x0f;
        int fin = (c->hdr[0] & 0x80) != 0;
        if (opcode == WSLAY_TEXT_FRAME || opcode == WSLAY_BINARY_FRAME) {
            c->msg_open = !fin;
        } else if (opcode == WSLAY_CONTINUATION_FRAME && fin) {
            c->msg_open = 0;
        }
        c->hdr_len = 0;
        c->payload_left = plen;
        if (opcode == WSLAY_BINARY_FRAME) {
            *code = WSLAY_CODE_UNSUPPORTED_DATA;
        } else if (plen > (uint64_t)c->net->cfg->max_message) {
            *code = WSLAY_CODE_MESSAGE_TOO_BIG;
        }
        if (*code != 0) {
            /* Frames before this one in the chunk are still processed. */
            return frame_start;
        }
    }
    return len;
}

/*
 * Whether data is nothing but whole pongs (client frames: FIN, masked,
 * payload up to 125 bytes) starting at a frame boundary of a connection
 * whose wslay state was released. A pong only shows that the peer is alive
 * (last_seen_ms is already set), so an idle connection answering the
 * heartbeat does not make wslay's 9 KiB state again for it.
 */
static int ws_only_pongs(const conn_t *c, const uint8_t *data, size_t len)
{
    if (c->ws != NULL || c->state != CONN_WS || c->hdr_len != 0 || c->payload_left != 0 ||
        c->msg_open || len == 0) {
        return 0;
    }
    size_t i = 0;
    while (i < len) {
        if (len - i < 2 || data[i] != (0x80 | WSLAY_PONG) || (data[i + 1] & 0x80) == 0 ||
            (data[i + 1] & 0x7f) > 125) {
            return 0;
        }
        size_t flen = 2 + 4 + (size_t)(data[i + 1] & 0x7f);
        if (len - i < flen) {
            return 0;
        }
        i += flen;
    }
    return 1;
}

void ws_feed(conn_t *c, const uint8_t *data, size_t len)
{
    uint16_t code = 0;
    if (c->fail_fast) {
        return;     /* the connection failed: what follows is not read */
    }
    if (ws_only_pongs(c, data, len)) {
        return;
    }
    if (c->state == CONN_WS) {
        len = ws_scan(c, data, len, &code);
    }
    if (ws_ensure(c) != 0) {
        return;
    }
    c->last_io_ms = c->last_seen_ms;
    net_t *n = c->net;
    /* Saved and restored: a handler may, in principle, feed another conn. */
    const uint8_t *saved_in = n->in;
    size_t saved_len = n->in_len;
    n->in = data;
    n->in_len = len;
    int rc = wslay_event_recv(c->ws);
    n->in = saved_in;
    n->in_len = saved_len;
    if (rc != 0) {
        /* Only our own callbacks fail wslay_event_recv: out of memory. */
        conn_abort(c);
        return;
    }
    if (code != 0 && c->state == CONN_WS) {
        conn_close(c, code, code == WSLAY_CODE_UNSUPPORTED_DATA ? "binary frames are not accepted"
                                                                 : "message too big");
    }
    if (c->state == CONN_WS && !wslay_event_get_read_enabled(c->ws)) {
        /* wslay refused the input (RFC 6455 violation, or a message over
         * the limit) and queued its close frame: fail the connection. */
        conn_close(c, 0, NULL);
        c->fail_fast = 1;
    }
    conn_mark_dirty(c);
}

size_t ws_queued_bytes(const conn_t *c)
{
    return c->ws != NULL ? wslay_event_get_queued_msg_length(c->ws) : 0;
}

int ws_send_frame(conn_t *c, wsframe_t *f)
{
    if (c->state != CONN_WS) {
        return -1;
    }
    net_t *n = c->net;
    c->last_io_ms = (uint32_t)uv_now(n->loop);
    if (conn_pending_bytes(c) + f->len > (size_t)n->cfg->outbound_limit) {
        log_debug("event=slow_consumer pending=%zu", conn_pending_bytes(c));
        metrics_count_error(n->metrics, PROTO_E_COUNT);   /* the slow_consumer slot */
        conn_close(c, 1013, "outgoing queue full: reconnect with since");
        return -1;
    }
    /* Data frames bypass wslay's queue (a malloc and a copy per message
     * and receiver): wslay only ever queues control frames. Whatever it
     * queued (a pong to a ping that came in with this request, say) moves
     * to the conn's queue first, so everything leaves in the order it was
     * made. Nothing queued costs one check. */
    ws_drain(c);
    if (c->state != CONN_WS) {
        return -1;
    }
    /* A deflate connection gets the frame's compressed form, made once
     * for every such member of this worker. */
    if (c->deflate) {
        f = deflate_frame(&n->deflate, f);
    }
    if (outq_push(&c->out, wsframe_ref(f)) != 0) {
        wsframe_unref(f);
        conn_abort(c);
        return -1;
    }
    conn_mark_dirty(c);
    return 0;
}

void ws_ping(conn_t *c)
{
    /* Framed here rather than by wslay: a heartbeat to an idle connection
     * must not make its wslay state again. */
    static const uint8_t ping[2] = { 0x80 | WSLAY_PING, 0 };
    conn_send_raw(c, ping, sizeof(ping));
}

void ws_close(conn_t *c, uint16_t code, const char *reason)
{
    if (ws_ensure(c) != 0) {
        return;
    }
    size_t rlen = reason != NULL ? strlen(reason) : 0;
    /* wslay refuses a close when one was already queued; that one stands. */
    wslay_event_queue_close(c->ws, code, (const uint8_t *)reason, rlen);
    conn_mark_dirty(c);
}

void ws_drain(conn_t *c)
{
    if (c->ws != NULL && wslay_event_want_write(c->ws)) {
        if (wslay_event_send(c->ws) != 0) {
            conn_abort(c);
        }
    }
}

int ws_finished(const conn_t *c)
{
    if (c->ws == NULL) {
        return 1;
    }
    return !wslay_event_want_write(c->ws) &&
           (wslay_event_get_close_received(c->ws) || !wslay_event_want_read(c->ws));
}
