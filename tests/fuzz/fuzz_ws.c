/*
 * fuzz_ws: the WebSocket frame path of an upgraded connection. The input is
 * what a client sends after the upgrade: masked frames.
 *
 * This target links worker/net/ws.c itself (ws_scan, ws_feed, the wslay
 * callbacks), so the code under test is the server's. What ws.c needs of
 * the rest of the net wing is modelled below after conn.c: conn_close
 * queues the close frame and ends the session, conn_abort drops the
 * connection; the net handler table's text() decodes with proto and
 * answers like the session (pong or error), which exercises ws_send_frame
 * and the output queue (outq, wsframe: linked, not modelled).
 * Redis, rooms and libuv I/O are not involved.
 *
 * Each input runs twice:
 *  1. fed in one read with the default --max-message of 65536;
 *  2. fed in reads of pseudo-random sizes (seeded by a hash of the input)
 *     with --max-message 512, so the size limits are reachable by short
 *     inputs, and between reads the server's own events: draining output,
 *     heartbeat pings, broadcasts, the idle release of the wslay context
 *     (conn_tick) and sometimes a graceful 1001 close.
 */
#include "../../worker/net/conn.h"
#include "../../worker/net/net.h"
#include "../../worker/net/ws.h"
#include "../../common/log.h"
#include "../../proto/proto.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(cond) do { \
        if (!(cond)) { \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
            abort(); \
        } \
    } while (0)

static config_t cfg;
static metrics_slot_t metrics;
static uv_loop_t loop;          /* never run: only its clock is read */
static net_t *net;

/* ---- the model of conn.c and of the session handlers that ws.c calls ---- */

void conn_mark_dirty(conn_t *c)
{
    if (c->state != CONN_CLOSED) {
        c->dirty = 1;
    }
}

size_t conn_pending_bytes(const conn_t *c)
{
    return outq_bytes(c->out) + ws_queued_bytes(c);
}

int conn_send_raw(conn_t *c, const void *bytes, size_t len)
{
    if (len == 0) {
        return 0;
    }
    wsframe_t *f = wsframe_raw(bytes, len);
    if (f == NULL || outq_push(&c->out, f) != 0) {
        wsframe_unref(f);
        conn_abort(c);
        return -1;
    }
    conn_mark_dirty(c);
    return 0;
}

void conn_abort(conn_t *c)
{
    /* The real one closes the handle; the conn is freed in close_cb, after
     * this call chain, so c stays valid here too. */
    c->state = CONN_CLOSED;
}

void conn_close(conn_t *c, uint16_t code, const char *reason)
{
    if (c->state == CONN_CLOSED || c->state == CONN_CLOSING) {
        return;
    }
    if (c->state == CONN_WS) {
        if (code == 1013) {
            outq_drop_unstarted(c->out);
        }
        if (code != 0) {
            ws_close(c, code, reason);
        }
        c->fail_fast = code != 0 && code != 1000 && code != 1001 && code != 1012;
    }
    c->state = CONN_CLOSING;
    c->shut_after_write = 1;
    conn_mark_dirty(c);
}

/* Messages that reached the session in the current run. */
static size_t texts;

static void on_text(void *ud, conn_t *c, const char *text, size_t len)
{
    (void)ud;
    /* What ws.c promises the session. */
    CHECK(c->state == CONN_WS);
    CHECK(len <= (size_t)cfg.max_message);
    CHECK(proto_utf8_valid((const uint8_t *)text, len));
    texts++;

    proto_limits_t lim = { .max_content = (size_t)cfg.max_content };
    proto_req_t req;
    const char *why = NULL;
    proto_err_t rc = proto_decode(text, len, &lim, &req, &why);
    char *json;
    if (rc != PROTO_OK) {
        json = proto_encode_error(req.has_id ? req.id : NULL, rc, why);
    } else if (req.type == PROTO_PING) {
        json = proto_encode_pong(req.has_id ? req.id : NULL);
    } else if (req.type == PROTO_JOIN) {
        json = proto_encode_joined(req.has_id ? req.id : NULL, req.room, 0, 0, 0, 0);
    } else {
        json = proto_encode_error(req.has_id ? req.id : NULL, PROTO_E_NOT_JOINED,
                                  "join the room first");
    }
    proto_req_free(&req);
    if (json != NULL) {
        wsframe_t *f = wsframe_text(json, strlen(json), NULL, 0, NULL, 0);
        CHECK(f != NULL);
        ws_send_frame(c, f);
        wsframe_unref(f);
        free(json);
    }
}

/* ---- the harness ---- */

static uint64_t rng;

static uint32_t next_rand(void)
{
    /* xorshift64*: deterministic per input, so crashes reproduce. */
    rng ^= rng >> 12;
    rng ^= rng << 25;
    rng ^= rng >> 27;
    return (uint32_t)((rng * UINT64_C(2685821657736338717)) >> 32);
}

static void conn_init(conn_t *c)
{
    memset(c, 0, sizeof(*c));
    c->net = net;
    /* conn_upgrade: the context exists before the state turns to WS. */
    CHECK(ws_start(c) == 0);
    c->state = CONN_WS;
}

static void conn_done(conn_t *c)
{
    ws_stop(c);
    outq_clear(&c->out);
}

/* Feeds n bytes as one read, from an exact-size copy so ASan sees any read
 * past it, the way conn_on_read would. */
static void conn_read(conn_t *c, const uint8_t *data, size_t n)
{
    if (c->state == CONN_CLOSED || c->lingering) {
        return;
    }
    if (c->state != CONN_WS && c->ws == NULL) {
        return;
    }
    uint8_t *copy = malloc(n ? n : 1);
    CHECK(copy != NULL);
    memcpy(copy, data, n);
    ws_feed(c, copy, n);
    free(copy);
    CHECK(c->hdr_len < sizeof(c->hdr));
}

/* The flush: wslay's frames join the queue, and the socket takes them
 * (all of it, or, with keep, a part: a peer reading slowly). */
static void conn_flush_model(conn_t *c, int keep)
{
    if (c->state == CONN_CLOSED) {
        return;
    }
    ws_drain(c);
    if (!keep) {
        outq_consume(c->out, outq_bytes(c->out));
    } else if (outq_bytes(c->out) > 0) {
        outq_consume(c->out, outq_bytes(c->out) / 3);
    }
    c->dirty = 0;
    /* conn_finish: a failed connection lingers once its output is out. */
    if (c->state == CONN_CLOSING && outq_len(c->out) == 0 && (c->fail_fast || ws_finished(c))) {
        c->lingering = 1;
    }
}

static void run_whole(const uint8_t *data, size_t size)
{
    conn_t *c = calloc(1, sizeof(*c));
    CHECK(c != NULL);
    cfg.max_message = 65536;
    cfg.outbound_limit = 4194304;
    conn_init(c);
    conn_read(c, data, size);
    conn_flush_model(c, 0);
    conn_done(c);
    free(c);
}

static void run_chunked(const uint8_t *data, size_t size)
{
    conn_t *c = calloc(1, sizeof(*c));
    CHECK(c != NULL);
    cfg.max_message = 512;
    cfg.outbound_limit = 2048;
    conn_init(c);

    size_t off = 0;
    while (off < size && c->state != CONN_CLOSED && !c->lingering) {
        uint32_t r = next_rand();
        size_t n = (r & 3) == 0 ? 1 + (r >> 8) % 512 : 1 + (r >> 8) % 16;
        if (n > size - off) {
            n = size - off;
        }
        conn_read(c, data + off, n);
        off += n;

        /* What the worker may do before the next read arrives. */
        uint32_t ev = next_rand();
        if (ev % 5 == 0 && c->state == CONN_WS) {
            ws_ping(c);
        }
        if (ev % 7 == 0 && c->state == CONN_WS) {
            static const char chat[] = "{\"type\":\"chat\",\"payload\":{\"room\":\"r\",\"seq\":1,"
                                       "\"sender\":\"bob\",\"content\":\"hi\",\"attachments\":[],"
                                       "\"ts\":1700000000000}}";
            wsframe_t *f = wsframe_text(chat, sizeof(chat) - 1, NULL, 0, NULL, 0);
            CHECK(f != NULL);
            ws_send_frame(c, f);
            wsframe_unref(f);
        }
        if (ev % 97 == 0) {
            conn_close(c, 1001, "going away");
        }
        /* Sometimes the peer reads slowly and output piles up (1013). */
        conn_flush_model(c, ev % 3 == 0);
        if (ev % 2 == 0 && c->state == CONN_WS) {
            ws_release_if_idle(c);
        }
    }
    conn_flush_model(c, 0);
    conn_done(c);
    free(c);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    static const net_handlers_t handlers = { .text = on_text };
    net = calloc(1, sizeof(*net));
    if (net == NULL) {
        abort();
    }
    net->loop = &loop;
    net->cfg = &cfg;
    net->metrics = &metrics;
    net->h = &handlers;
    cfg.max_message = 65536;
    cfg.max_content = 16384;
    cfg.heartbeat = 25;
    cfg.outbound_limit = 4194304;
    /* The debug lines ws.c writes go through the formatting, not to the
     * terminal. */
    log_open("/dev/null", LOG_DEBUG);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint64_t h = UINT64_C(1469598103934665603);
    for (size_t i = 0; i < size; i++) {
        h = (h ^ data[i]) * UINT64_C(1099511628211);
    }
    rng = h | 1;
    texts = 0;

    run_whole(data, size);
    run_chunked(data, size);
    return 0;
}
