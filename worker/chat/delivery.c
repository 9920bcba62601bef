#include "delivery.h"
#include "../data/archive.h"
#include "../data/store.h"
#include "../net/conn.h"
#include "../../common/log.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

static uint64_t delivery_now_us(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (uint64_t)tv.tv_sec * 1000000u + (uint64_t)tv.tv_usec;
}

/* A live frame a replaying member holds back: a reference, not a copy. */
typedef struct held_s {
    struct held_s *next;
    int64_t seq;
    wsframe_t *wf;
} held_t;

static void delivery_free_frame(frame_t *f)
{
    wsframe_unref(f->wf);
    free(f);
}

void delivery_free_frames(frame_t *f)
{
    while (f != NULL) {
        frame_t *next = f->next;
        delivery_free_frame(f);
        f = next;
    }
}

/* Builds a frame of type ("chat", "edit", ...) from "payload" JSON text:
 * the WebSocket frame is made here, once, and every member's queue takes a
 * reference to it. */
static frame_t *delivery_frame(int64_t seq, uint64_t ts_us, const char *type, const char *payload,
                               size_t len)
{
    char head[48];
    int hn = snprintf(head, sizeof(head), "{\"type\":\"%s\",\"payload\":", type);
    if (hn < 0 || (size_t)hn >= sizeof(head)) {
        return NULL;
    }
    frame_t *f = malloc(sizeof(*f));
    if (f == NULL) {
        return NULL;
    }
    f->wf = wsframe_text(head, (size_t)hn, payload, len, "}", 1);
    if (f->wf == NULL) {
        free(f);
        return NULL;
    }
    f->next = NULL;
    f->seq = seq;
    f->ts_us = ts_us;
    return f;
}

static void delivery_send(member_t *m, int64_t seq, wsframe_t *wf)
{
    if (seq > m->last_seq) {
        m->last_seq = seq;
        metrics_add(&m->room->chat->metrics->messages_delivered, 1);
        conn_send_frame(m->conn, wf);
    }
}

static void delivery_hold(member_t *m, const frame_t *f)
{
    held_t *h = malloc(sizeof(*h));
    if (h == NULL) {
        /* Cannot keep the order promise for this client: let it reconnect. */
        conn_close(m->conn, 1011, "out of memory");
        return;
    }
    h->seq = f->seq;
    h->wf = wsframe_ref(f->wf);
    h->next = NULL;
    member_join_t *j = m->join;
    if (j->held_tail != NULL) {
        j->held_tail->next = h;
    } else {
        j->held = h;
    }
    j->held_tail = h;
}

void delivery_end_join(member_t *m)
{
    member_join_t *j = m->join;
    if (j == NULL) {
        return;
    }
    held_t *h = j->held;
    while (h != NULL) {
        held_t *next = h->next;
        wsframe_unref(h->wf);
        free(h);
        h = next;
    }
    free(j);
    m->join = NULL;
}

/* Delivers the next in-order frame to every member. */
static void delivery_fan_out(chat_t *ch, room_t *r, const frame_t *f)
{
    r->last_seq = f->seq;
    if (f->ts_us != 0) {
        uint64_t now = delivery_now_us();
        metrics_observe_latency(ch->metrics, now > f->ts_us ? now - f->ts_us : 0);
    }
    member_t *next;
    for (member_t *m = r->members; m != NULL; m = next) {
        next = m->room_next;
        if (m->state == MEMBER_LIVE) {
            delivery_send(m, f->seq, f->wf);
        } else if (m->state == MEMBER_REPLAYING) {
            delivery_hold(m, f);
        }
    }
}

static void delivery_fetch(chat_t *ch, room_t *r, int64_t from, int64_t to);

/* Delivers pending frames that are next in line; fetches a gap. */
static void delivery_drain(chat_t *ch, room_t *r)
{
    while (r->pending != NULL && !r->syncing) {
        frame_t *f = r->pending;
        if (f->seq <= r->last_seq) {
            r->pending = f->next;
            delivery_free_frame(f);
            continue;
        }
        if (f->seq > r->last_seq + 1) {
            delivery_fetch(ch, r, r->last_seq + 1, f->seq - 1);
            return;
        }
        r->pending = f->next;
        delivery_fan_out(ch, r, f);
        delivery_free_frame(f);
    }
}

/* Takes ownership of f: delivers it now, or keeps it until its turn. */
static void delivery_accept(chat_t *ch, room_t *r, frame_t *f)
{
    if (r->last_seq >= 0 && f->seq <= r->last_seq) {
        delivery_free_frame(f);
        return;
    }
    if (r->last_seq >= 0 && !r->syncing && f->seq == r->last_seq + 1 && r->pending == NULL) {
        delivery_fan_out(ch, r, f);
        delivery_free_frame(f);
        return;
    }
    frame_t **pp = &r->pending;
    while (*pp != NULL && (*pp)->seq < f->seq) {
        pp = &(*pp)->next;
    }
    if (*pp != NULL && (*pp)->seq == f->seq) {
        delivery_free_frame(f);
        return;
    }
    f->next = *pp;
    *pp = f;
    if (r->last_seq >= 0) {
        delivery_drain(ch, r);
    }
}

static void delivery_on_fetch(void *arg, redisReply *reply)
{
    room_call_t *call = arg;
    chat_t *ch = call->room->chat;
    room_t *r = call->room;
    r->syncing = 0;
    if (reply != NULL && reply->type == REDIS_REPLY_ARRAY) {
        for (size_t i = 0; i < reply->elements; i++) {
            store_entry_t e;
            if (store_entry(reply->element[i], &e) != 0 || e.seq <= r->last_seq) {
                continue;
            }
            frame_t *f = delivery_frame(e.seq, 0, e.type, e.payload, e.len);
            if (f != NULL) {
                delivery_fan_out(ch, r, f);
                delivery_free_frame(f);
            }
        }
        /* What the log no longer has cannot be delivered: skip past it
         * rather than stall the room. */
        if (r->pending != NULL && r->pending->seq > r->last_seq + 1 && call->upto >= 0 &&
            r->last_seq < call->upto) {
            log_warn("event=room_gap room=%s from=%" PRId64 " to=%" PRId64, r->name,
                     r->last_seq + 1, r->pending->seq - 1);
            r->last_seq = r->pending->seq - 1;
        }
        delivery_drain(ch, r);
    }
    /* On failure the bus is down; room_on_bus_up() resynchronises. */
    room_call_free(call);
}

static void delivery_fetch(chat_t *ch, room_t *r, int64_t from, int64_t to)
{
    room_call_t *call = room_call_new(NULL, r);
    if (call == NULL) {
        return;
    }
    call->upto = to;
    long count = to < 0 ? 100000 : (long)(to - from + 1);
    r->syncing = 1;
    if (store_range(ch->bus, r->name, from, to, count, delivery_on_fetch, call) != 0) {
        r->syncing = 0;
        room_call_free(call);
    }
}

static void delivery_send_joined(member_t *m, int64_t seq, int recovered)
{
    const char *id = m->join != NULL && m->join->id[0] != '\0' ? m->join->id : NULL;
    int64_t read_seq = m->join != NULL ? m->join->read_seq : 0;
    int unread = m->join != NULL ? m->join->unread : 0;
    session_send_json(m->conn, proto_encode_joined(id, m->room->name, seq, recovered, read_seq, unread));
}

/* Sends the held live frames after a replay and goes live. */
static void delivery_go_live(member_t *m)
{
    m->state = MEMBER_LIVE;
    for (held_t *h = m->join->held; h != NULL && m->conn->state == CONN_WS; h = h->next) {
        delivery_send(m, h->seq, h->wf);
    }
    /* A member lives as long as its connection; its join state does not. */
    delivery_end_join(m);
}

static void delivery_on_replay(void *arg, redisReply *reply)
{
    room_call_t *call = arg;
    conn_t *c = call->conn;
    member_t *m = c->state == CONN_WS ? room_member_of(c, call->room->name) : NULL;
    if (m == NULL || m->state != MEMBER_REPLAYING || m->join->serial != call->serial) {
        room_call_free(call);
        return;
    }
    /* Recovered only when the log still holds every missed message. */
    int64_t want = call->upto - call->since;
    int ok = reply != NULL && reply->type == REDIS_REPLY_ARRAY && (int64_t)reply->elements == want;
    store_entry_t e = { .seq = -1 };
    if (ok && (store_entry(reply->element[0], &e) != 0 || e.seq != call->since + 1)) {
        ok = 0;
    }
    if (!ok) {
        log_info("event=replay_incomplete room=%s since=%" PRId64 " upto=%" PRId64 " got=%zu first=%" PRId64,
                 call->room->name, call->since, call->upto,
                 reply != NULL && reply->type == REDIS_REPLY_ARRAY ? reply->elements : 0, e.seq);
    }
    delivery_send_joined(m, call->upto, ok);
    if (ok) {
        for (size_t i = 0; i < reply->elements && c->state == CONN_WS; i++) {
            if (store_entry(reply->element[i], &e) == 0) {
                frame_t *f = delivery_frame(e.seq, 0, e.type, e.payload, e.len);
                if (f == NULL) {
                    conn_close(c, 1011, "out of memory");
                    break;
                }
                delivery_send(m, f->seq, f->wf);
                delivery_free_frame(f);
            }
        }
    } else {
        m->last_seq = call->upto;
    }
    if (c->state == CONN_WS) {
        delivery_go_live(m);
    }
    room_call_free(call);
}

/* The room's last seq is known: the member gets joined, its replay, then
 * live traffic. */
void delivery_start_member(chat_t *ch, member_t *m)
{
    room_t *r = m->room;
    if (!m->join->read_ready) {
        return;     /* unread_join() starts it when the read state comes */
    }
    int64_t seq = r->last_seq;
    int64_t since = m->join->since;
    if (since < 0 || since >= seq || seq - since > ch->cfg->recovery_window) {
        m->last_seq = seq;
        m->state = MEMBER_LIVE;
        delivery_send_joined(m, seq, since >= 0 && since >= seq);
        delivery_end_join(m);
        return;
    }
    m->state = MEMBER_REPLAYING;
    m->last_seq = since;
    room_call_t *call = room_call_new(m->conn, r);
    if (call != NULL) {
        call->serial = m->join->serial;
        call->since = since;
        call->upto = seq;
        if (store_range(ch->bus, r->name, since + 1, seq, (long)(seq - since), delivery_on_replay, call) == 0) {
            return;
        }
        room_call_free(call);
    }
    /* No replay possible now: the client pages history instead. */
    m->last_seq = seq;
    delivery_send_joined(m, seq, 0);
    delivery_go_live(m);
}

static void delivery_on_last_seq(void *arg, redisReply *reply);

static void delivery_on_seeded(void *arg, redisReply *reply)
{
    room_call_t *call = arg;
    chat_t *ch = call->room->chat;
    room_t *r = call->room;
    if (reply == NULL || store_last_seq(ch->bus, r->name, delivery_on_last_seq, call) != 0) {
        r->syncing = 0;
        room_call_free(call);
    }
}

static void delivery_on_archive_max(void *arg, int64_t seq)
{
    room_call_t *call = arg;
    chat_t *ch = call->room->chat;
    room_t *r = call->room;
    if (seq < 0 || store_seed_seq(ch->bus, r->name, seq, delivery_on_seeded, call) != 0) {
        /* Retried when the room resubscribes or another member joins. */
        r->syncing = 0;
        room_call_free(call);
    }
}

static void delivery_on_last_seq(void *arg, redisReply *reply)
{
    room_call_t *call = arg;
    chat_t *ch = call->room->chat;
    room_t *r = call->room;
    if (reply != NULL && reply->type == REDIS_REPLY_NIL && ch->archive != NULL && !call->seeded) {
        /* No counter in Redis: a new room, or Redis lost its data. The
         * archive knows how far the room really got. */
        call->seeded = 1;
        if (archive_max_seq(ch->archive, r->name, delivery_on_archive_max, call) == 0) {
            return;
        }
    }
    r->syncing = 0;
    if (reply != NULL && (reply->type == REDIS_REPLY_NIL || reply->type == REDIS_REPLY_STRING)) {
        r->last_seq = reply->type == REDIS_REPLY_NIL ? 0 : strtoll(reply->str, NULL, 10);
        member_t *next;
        for (member_t *m = r->members; m != NULL; m = next) {
            next = m->room_next;
            if (m->state == MEMBER_WAITING) {
                delivery_start_member(ch, m);
            }
        }
        delivery_drain(ch, r);
    }
    room_call_free(call);
}

void delivery_on_published(chat_t *ch, room_t *r, int event, const char *msg, size_t len)
{
    /* "<seq> <ts_us> <payload>", or "<seq> <ts_us> <type> <payload>" */
    char *end;
    long long seq = strtoll(msg, &end, 10);
    if (*end != ' ') {
        return;
    }
    unsigned long long ts = strtoull(end + 1, &end, 10);
    if (*end != ' ' || seq <= 0) {
        return;
    }
    char type[16] = "chat";
    const char *payload = end + 1;
    if (event) {
        const char *sp = memchr(payload, ' ', len - (size_t)(payload - msg));
        if (sp == NULL || (size_t)(sp - payload) >= sizeof(type)) {
            return;
        }
        memcpy(type, payload, (size_t)(sp - payload));
        type[sp - payload] = '\0';
        payload = sp + 1;
    }
    frame_t *f = delivery_frame(seq, ts, type, payload, len - (size_t)(payload - msg));
    if (f != NULL) {
        delivery_accept(ch, r, f);
    }
}

void delivery_sync(chat_t *ch, room_t *r)
{
    if (r->last_seq < 0) {
        /* New here: learn where the room stands. Messages published from
         * now on are already arriving and wait in pending. */
        room_call_t *call = room_call_new(NULL, r);
        if (call == NULL) {
            return;
        }
        r->syncing = 1;
        if (store_last_seq(ch->bus, r->name, delivery_on_last_seq, call) != 0) {
            r->syncing = 0;
            room_call_free(call);
        }
        return;
    }
    /* Back after an outage or a quick leave and rejoin: fetch what was
     * published meanwhile; members waiting since then start now and
     * receive it live. */
    delivery_fetch(ch, r, r->last_seq + 1, -1);
    member_t *next;
    for (member_t *m = r->members; m != NULL; m = next) {
        next = m->room_next;
        if (m->state == MEMBER_WAITING) {
            delivery_start_member(ch, m);
        }
    }
}

void delivery_retry(chat_t *ch, room_t *r)
{
    if (r->syncing) {
        return;
    }
    if (r->last_seq < 0) {
        delivery_sync(ch, r);
    } else if (r->pending != NULL) {
        delivery_drain(ch, r);
    }
}
