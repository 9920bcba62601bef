#include "room.h"
#include "archive.h"
#include "bus.h"
#include "conn.h"
#include "session.h"
#include "store.h"
#include "worker.h"
#include "ws.h"
#include "../common/log.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

enum { SUB_NONE = 0, SUB_PENDING, SUB_LIVE, SUB_LEAVING };
enum { MEMBER_WAITING = 0, MEMBER_REPLAYING, MEMBER_LIVE };

/* A frame shared by the members that hold it during their replay. */
typedef struct held_s {
    struct held_s *next;
    frame_t *frame;
} held_t;

struct room_s {
    room_t *hnext;
    member_t *members;
    size_t nmembers;
    int64_t last_seq;           /* last seq delivered here; -1 until known */
    uint8_t sub;
    uint8_t syncing;            /* a fetch from the store is in flight */
    uint32_t ops;               /* store calls in flight that point here */
    frame_t *pending;           /* arrived ahead of last_seq + 1, by seq */
    char name[PROTO_ROOM_MAX + 1];
};

/* What an asynchronous store call remembers. */
typedef struct room_call_s {
    conn_t *conn;               /* referenced, or NULL */
    room_t *room;               /* ops counted, or NULL */
    uint64_t serial;            /* the member it is for */
    int has_id;
    char id[PROTO_ID_MAX + 1];
    int64_t since;
    int64_t upto;
    int64_t before;             /* history: the request's before, -1 = newest */
    char *tail;                 /* chat: the encoded payload tail, owned */
    int seeded;                 /* chat: the counter was seeded once already */
    char **texts;               /* history: payloads from Redis, newest first, owned */
    size_t ntexts;
} room_call_t;

static uint64_t room_now_us(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (uint64_t)tv.tv_sec * 1000000u + (uint64_t)tv.tv_usec;
}

static uint64_t room_hash(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s != '\0'; s++) {
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    }
    return h;
}

static room_t *room_find(worker_t *w, const char *name)
{
    if (w->rooms_cap == 0) {
        return NULL;
    }
    for (room_t *r = w->rooms[room_hash(name) & (w->rooms_cap - 1)]; r != NULL; r = r->hnext) {
        if (strcmp(r->name, name) == 0) {
            return r;
        }
    }
    return NULL;
}

static int room_table_grow(worker_t *w)
{
    size_t cap = w->rooms_cap == 0 ? 64 : w->rooms_cap * 2;
    room_t **t = calloc(cap, sizeof(*t));
    if (t == NULL) {
        return -1;
    }
    for (size_t i = 0; i < w->rooms_cap; i++) {
        room_t *r = w->rooms[i];
        while (r != NULL) {
            room_t *next = r->hnext;
            size_t b = room_hash(r->name) & (cap - 1);
            r->hnext = t[b];
            t[b] = r;
            r = next;
        }
    }
    free(w->rooms);
    w->rooms = t;
    w->rooms_cap = cap;
    return 0;
}

static room_t *room_create(worker_t *w, const char *name)
{
    if (w->nrooms + 1 > w->rooms_cap / 2 && room_table_grow(w) != 0) {
        return NULL;
    }
    room_t *r = calloc(1, sizeof(*r));
    if (r == NULL) {
        return NULL;
    }
    snprintf(r->name, sizeof(r->name), "%s", name);
    r->last_seq = -1;
    size_t b = room_hash(name) & (w->rooms_cap - 1);
    r->hnext = w->rooms[b];
    w->rooms[b] = r;
    w->nrooms++;
    return r;
}

static void room_free_frames(frame_t *f)
{
    while (f != NULL) {
        frame_t *next = f->next;
        free(f);
        f = next;
    }
}

static void room_destroy(worker_t *w, room_t *r)
{
    room_t **pp = &w->rooms[room_hash(r->name) & (w->rooms_cap - 1)];
    while (*pp != r) {
        pp = &(*pp)->hnext;
    }
    *pp = r->hnext;
    w->nrooms--;
    room_free_frames(r->pending);
    free(r);
}

static void room_subscribe(worker_t *w, room_t *r)
{
    if (r->sub != SUB_NONE) {
        return;
    }
    char chan[PROTO_ROOM_MAX + 16];
    size_t n = store_channel(r->name, chan, sizeof(chan));
    if (bus_subscribe(w->bus, chan, n) == 0) {
        r->sub = SUB_PENDING;
    }
}

/* Builds a frame from "payload" JSON text. */
static frame_t *room_frame(int64_t seq, uint64_t ts_us, const char *payload, size_t len)
{
    static const char head[] = "{\"type\":\"chat\",\"payload\":";
    frame_t *f = malloc(sizeof(*f) + sizeof(head) - 1 + len + 2);
    if (f == NULL) {
        return NULL;
    }
    f->next = NULL;
    f->seq = seq;
    f->ts_us = ts_us;
    memcpy(f->data, head, sizeof(head) - 1);
    memcpy(f->data + sizeof(head) - 1, payload, len);
    f->len = sizeof(head) - 1 + len;
    f->data[f->len++] = '}';
    f->data[f->len] = '\0';
    return f;
}

static void member_send(member_t *m, const frame_t *f)
{
    if (f->seq > m->last_seq) {
        m->last_seq = f->seq;
        metrics_add(&m->conn->w->metrics->slot[m->conn->w->slot].messages_delivered, 1);
        ws_send_text(m->conn, f->data, f->len);
    }
}

static void member_hold(member_t *m, const frame_t *f)
{
    held_t *h = malloc(sizeof(*h) + sizeof(frame_t) + f->len + 1);
    if (h == NULL) {
        /* Cannot keep the order promise for this client: let it reconnect. */
        conn_close(m->conn, 1011, "out of memory");
        return;
    }
    frame_t *copy = (frame_t *)(h + 1);
    memcpy(copy, f, sizeof(frame_t) + f->len + 1);
    h->frame = copy;
    h->next = NULL;
    if (m->held_tail != NULL) {
        ((held_t *)m->held_tail)->next = h;
    } else {
        m->held = (frame_t *)h;
    }
    m->held_tail = (frame_t *)h;
}

static void member_drop_held(member_t *m)
{
    held_t *h = (held_t *)m->held;
    while (h != NULL) {
        held_t *next = h->next;
        free(h);
        h = next;
    }
    m->held = m->held_tail = NULL;
}

/* Delivers the next in-order frame to every member. */
static void room_deliver(worker_t *w, room_t *r, const frame_t *f)
{
    r->last_seq = f->seq;
    if (f->ts_us != 0) {
        uint64_t now = room_now_us();
        metrics_observe_latency(&w->metrics->slot[w->slot], now > f->ts_us ? now - f->ts_us : 0);
    }
    member_t *next;
    for (member_t *m = r->members; m != NULL; m = next) {
        next = m->room_next;
        if (m->state == MEMBER_LIVE) {
            member_send(m, f);
        } else if (m->state == MEMBER_REPLAYING) {
            member_hold(m, f);
        }
    }
}

static void room_fetch(worker_t *w, room_t *r, int64_t from, int64_t to);

/* Delivers pending frames that are next in line; fetches a gap. */
static void room_drain(worker_t *w, room_t *r)
{
    while (r->pending != NULL && !r->syncing) {
        frame_t *f = r->pending;
        if (f->seq <= r->last_seq) {
            r->pending = f->next;
            free(f);
            continue;
        }
        if (f->seq > r->last_seq + 1) {
            room_fetch(w, r, r->last_seq + 1, f->seq - 1);
            return;
        }
        r->pending = f->next;
        room_deliver(w, r, f);
        free(f);
    }
}

/* Takes ownership of f: delivers it now, or keeps it until its turn. */
static void room_accept_frame(worker_t *w, room_t *r, frame_t *f)
{
    if (r->last_seq >= 0 && f->seq <= r->last_seq) {
        free(f);
        return;
    }
    if (r->last_seq >= 0 && !r->syncing && f->seq == r->last_seq + 1 && r->pending == NULL) {
        room_deliver(w, r, f);
        free(f);
        return;
    }
    frame_t **pp = &r->pending;
    while (*pp != NULL && (*pp)->seq < f->seq) {
        pp = &(*pp)->next;
    }
    if (*pp != NULL && (*pp)->seq == f->seq) {
        free(f);
        return;
    }
    f->next = *pp;
    *pp = f;
    if (r->last_seq >= 0) {
        room_drain(w, r);
    }
}

static room_call_t *room_call_new(conn_t *c, room_t *r)
{
    room_call_t *call = calloc(1, sizeof(*call));
    if (call == NULL) {
        return NULL;
    }
    if (c != NULL) {
        conn_ref(c);
        call->conn = c;
    }
    if (r != NULL) {
        r->ops++;
        call->room = r;
    }
    return call;
}

static void room_call_free(room_call_t *call)
{
    if (call->conn != NULL) {
        conn_unref(call->conn);
    }
    if (call->room != NULL) {
        call->room->ops--;
    }
    for (size_t i = 0; i < call->ntexts; i++) {
        free(call->texts[i]);
    }
    free(call->texts);
    free(call->tail);
    free(call);
}

static void room_on_fetch(worker_t *w, void *arg, redisReply *reply)
{
    room_call_t *call = arg;
    room_t *r = call->room;
    r->syncing = 0;
    if (reply != NULL && reply->type == REDIS_REPLY_ARRAY) {
        for (size_t i = 0; i < reply->elements; i++) {
            int64_t seq;
            const char *p;
            size_t len;
            if (store_entry(reply->element[i], &seq, &p, &len) != 0 || seq <= r->last_seq) {
                continue;
            }
            frame_t *f = room_frame(seq, 0, p, len);
            if (f != NULL) {
                room_deliver(w, r, f);
                free(f);
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
        room_drain(w, r);
    }
    /* On failure the bus is down; room_on_bus_up() resynchronises. */
    room_call_free(call);
}

static void room_fetch(worker_t *w, room_t *r, int64_t from, int64_t to)
{
    room_call_t *call = room_call_new(NULL, r);
    if (call == NULL) {
        return;
    }
    call->upto = to;
    long count = to < 0 ? 100000 : (long)(to - from + 1);
    r->syncing = 1;
    if (store_range(w, r->name, from, to, count, room_on_fetch, call) != 0) {
        r->syncing = 0;
        room_call_free(call);
    }
}

static member_t *member_of(conn_t *c, const char *room)
{
    for (member_t *m = c->sess.members; m != NULL; m = m->conn_next) {
        if (strcmp(m->room->name, room) == 0) {
            return m;
        }
    }
    return NULL;
}

static void member_send_joined(member_t *m, int64_t seq, int recovered)
{
    session_send_json(m->conn, proto_encode_joined(m->join_id, m->room->name, seq, recovered));
    /* Held only until answered: a member lives as long as its connection. */
    free(m->join_id);
    m->join_id = NULL;
}

/* Sends the held live frames after a replay and goes live. */
static void member_go_live(member_t *m)
{
    m->state = MEMBER_LIVE;
    held_t *h = (held_t *)m->held;
    m->held = m->held_tail = NULL;
    while (h != NULL) {
        held_t *next = h->next;
        if (m->conn->state == CONN_WS) {
            member_send(m, h->frame);
        }
        free(h);
        h = next;
    }
}

static void room_on_replay(worker_t *w, void *arg, redisReply *reply)
{
    (void)w;
    room_call_t *call = arg;
    conn_t *c = call->conn;
    member_t *m = c->state == CONN_WS ? member_of(c, call->room->name) : NULL;
    if (m == NULL || m->serial != call->serial || m->state != MEMBER_REPLAYING) {
        room_call_free(call);
        return;
    }
    /* Recovered only when the log still holds every missed message. */
    int64_t want = call->upto - call->since;
    int ok = reply != NULL && reply->type == REDIS_REPLY_ARRAY && (int64_t)reply->elements == want;
    int64_t seq = 0;
    const char *p;
    size_t len;
    if (ok && (store_entry(reply->element[0], &seq, &p, &len) != 0 || seq != call->since + 1)) {
        ok = 0;
    }
    member_send_joined(m, call->upto, ok);
    if (ok) {
        for (size_t i = 0; i < reply->elements && c->state == CONN_WS; i++) {
            if (store_entry(reply->element[i], &seq, &p, &len) == 0) {
                frame_t *f = room_frame(seq, 0, p, len);
                if (f == NULL) {
                    conn_close(c, 1011, "out of memory");
                    break;
                }
                member_send(m, f);
                free(f);
            }
        }
    } else {
        m->last_seq = call->upto;
    }
    if (c->state == CONN_WS) {
        member_go_live(m);
    }
    room_call_free(call);
}

/* The room's last seq is known: the member gets joined, its replay, then
 * live traffic. */
static void member_start(worker_t *w, member_t *m)
{
    room_t *r = m->room;
    int64_t seq = r->last_seq;
    int64_t since = m->since;
    if (since < 0 || since >= seq || seq - since > w->cfg->recovery_window) {
        m->last_seq = seq;
        m->state = MEMBER_LIVE;
        member_send_joined(m, seq, since >= 0 && since >= seq);
        return;
    }
    m->state = MEMBER_REPLAYING;
    m->last_seq = since;
    room_call_t *call = room_call_new(m->conn, r);
    if (call != NULL) {
        call->serial = m->serial;
        call->since = since;
        call->upto = seq;
        if (store_range(w, r->name, since + 1, seq, (long)(seq - since), room_on_replay, call) == 0) {
            return;
        }
        room_call_free(call);
    }
    /* No replay possible now: the client pages history instead. */
    m->last_seq = seq;
    member_send_joined(m, seq, 0);
    member_go_live(m);
}

static void room_on_last_seq(worker_t *w, void *arg, redisReply *reply);

static void room_on_seed_for_init(worker_t *w, void *arg, redisReply *reply)
{
    room_call_t *call = arg;
    room_t *r = call->room;
    if (reply == NULL || store_last_seq(w, r->name, room_on_last_seq, call) != 0) {
        r->syncing = 0;
        room_call_free(call);
    }
}

static void room_on_archive_max_for_init(worker_t *w, void *arg, int64_t seq)
{
    room_call_t *call = arg;
    room_t *r = call->room;
    if (seq < 0 || store_seed_seq(w, r->name, seq, room_on_seed_for_init, call) != 0) {
        /* Retried when the room resubscribes or another member joins. */
        r->syncing = 0;
        room_call_free(call);
    }
}

static void room_on_last_seq(worker_t *w, void *arg, redisReply *reply)
{
    room_call_t *call = arg;
    room_t *r = call->room;
    if (reply != NULL && reply->type == REDIS_REPLY_NIL && w->archive != NULL && !call->seeded) {
        /* No counter in Redis: a new room, or Redis lost its data. The
         * archive knows how far the room really got. */
        call->seeded = 1;
        if (archive_max_seq(w->archive, r->name, room_on_archive_max_for_init, call) == 0) {
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
                member_start(w, m);
            }
        }
        room_drain(w, r);
    }
    room_call_free(call);
}

static int room_user_count(const room_t *r, const char *user)
{
    int n = 0;
    for (const member_t *m = r->members; m != NULL; m = m->room_next) {
        n += strcmp(m->conn->sess.auth.user, user) == 0;
    }
    return n;
}

static void member_remove(worker_t *w, member_t *m)
{
    room_t *r = m->room;
    conn_t *c = m->conn;
    if (m->room_prev != NULL) {
        m->room_prev->room_next = m->room_next;
    } else {
        r->members = m->room_next;
    }
    if (m->room_next != NULL) {
        m->room_next->room_prev = m->room_prev;
    }
    r->nmembers--;
    member_t **pp = &c->sess.members;
    while (*pp != m) {
        pp = &(*pp)->conn_next;
    }
    *pp = m->conn_next;
    c->sess.nrooms--;
    member_drop_held(m);
    free(m->join_id);
    if (room_user_count(r, c->sess.auth.user) == 0) {
        store_member(w, r->name, c->sess.auth.user, 0);
    }
    free(m);
}

void room_join(conn_t *c, const proto_req_t *req)
{
    worker_t *w = c->w;
    const char *id = req->has_id ? req->id : NULL;
    if (!auth_room_allowed(&c->sess.auth, req->room)) {
        session_send_error(c, id, PROTO_E_FORBIDDEN, "your token does not allow this room");
        return;
    }
    member_t *m = member_of(c, req->room);
    if (m != NULL) {
        /* Already a member: nothing changes, the client learns where it is. */
        session_send_json(c, proto_encode_joined(id, req->room, m->last_seq, 0));
        return;
    }
    if (c->sess.nrooms >= w->cfg->max_rooms) {
        session_send_error(c, id, PROTO_E_FORBIDDEN, "joined too many rooms");
        return;
    }
    if (!bus_healthy(w->bus)) {
        session_send_error(c, id, PROTO_E_UNAVAILABLE, "storage unavailable, retry");
        return;
    }
    room_t *r = room_find(w, req->room);
    if (r == NULL && (r = room_create(w, req->room)) == NULL) {
        session_send_error(c, id, PROTO_E_INTERNAL, "out of memory");
        return;
    }
    m = calloc(1, sizeof(*m));
    if (m == NULL) {
        session_send_error(c, id, PROTO_E_INTERNAL, "out of memory");
        return;
    }
    m->room = r;
    m->conn = c;
    m->serial = ++w->next_session;
    m->since = req->has_since ? req->since : -1;
    if (req->has_id && (m->join_id = strdup(req->id)) == NULL) {
        free(m);
        session_send_error(c, id, PROTO_E_INTERNAL, "out of memory");
        return;
    }
    int first_here = room_user_count(r, c->sess.auth.user) == 0;
    m->room_next = r->members;
    if (r->members != NULL) {
        r->members->room_prev = m;
    }
    r->members = m;
    r->nmembers++;
    m->conn_next = c->sess.members;
    c->sess.members = m;
    c->sess.nrooms++;
    if (first_here) {
        store_member(w, r->name, c->sess.auth.user, 1);
    }
    room_subscribe(w, r);
    if (r->sub == SUB_LIVE && r->last_seq >= 0) {
        member_start(w, m);
    }
}

void room_leave(conn_t *c, const proto_req_t *req)
{
    const char *id = req->has_id ? req->id : NULL;
    member_t *m = member_of(c, req->room);
    if (m == NULL) {
        session_send_error(c, id, PROTO_E_NOT_JOINED, "not a member of this room");
        return;
    }
    member_remove(c->w, m);
    session_send_json(c, proto_encode_left(id, req->room));
}

void room_leave_all(conn_t *c)
{
    while (c->sess.members != NULL) {
        member_remove(c->w, c->sess.members);
    }
}

/*
 * The call of a request that needs the room joined: answers not_joined (or
 * internal) itself and returns NULL, or returns the call with the
 * request's id, holding c and the room.
 */
static room_call_t *room_request_call(conn_t *c, const proto_req_t *req)
{
    const char *id = req->has_id ? req->id : NULL;
    member_t *m = member_of(c, req->room);
    if (m == NULL) {
        session_send_error(c, id, PROTO_E_NOT_JOINED, "join the room first");
        return NULL;
    }
    room_call_t *call = room_call_new(c, m->room);
    if (call == NULL) {
        session_send_error(c, id, PROTO_E_INTERNAL, "out of memory");
        return NULL;
    }
    if (id != NULL) {
        call->has_id = 1;
        memcpy(call->id, id, sizeof(call->id));
    }
    return call;
}

static void room_on_sent(worker_t *w, void *arg, redisReply *reply);

static int room_send(worker_t *w, room_call_t *call)
{
    conn_t *c = call->conn;
    return store_send(w, call->room->name, c->sess.auth.user, call->has_id ? call->id : NULL,
                      call->tail, room_on_sent, call);
}

static void room_send_failed(room_call_t *call, const char *why)
{
    conn_t *c = call->conn;
    if (c->state == CONN_WS) {
        session_send_error(c, call->has_id ? call->id : NULL, PROTO_E_UNAVAILABLE, why);
    }
    room_call_free(call);
}

static void room_on_seeded(worker_t *w, void *arg, redisReply *reply)
{
    room_call_t *call = arg;
    if (reply == NULL || reply->type == REDIS_REPLY_ERROR || call->conn->state != CONN_WS ||
        room_send(w, call) != 0) {
        room_send_failed(call, "storage unavailable, retry");
    }
}

/* The archive's highest seq for a room whose Redis counter is missing:
 * the counter continues from there rather than from 1. */
static void room_on_archive_max(worker_t *w, void *arg, int64_t seq)
{
    room_call_t *call = arg;
    if (seq < 0 || call->conn->state != CONN_WS ||
        store_seed_seq(w, call->room->name, seq, room_on_seeded, call) != 0) {
        room_send_failed(call, "archive unavailable, retry");
    }
}

static void room_on_sent(worker_t *w, void *arg, redisReply *reply)
{
    room_call_t *call = arg;
    conn_t *c = call->conn;
    const char *id = call->has_id ? call->id : NULL;
    if (reply != NULL && reply->type == REDIS_REPLY_ARRAY && reply->elements == 3 &&
        reply->element[0]->type == REDIS_REPLY_INTEGER) {
        if (reply->element[0]->integer < 0) {
            if (!call->seeded && c->state == CONN_WS && w->archive != NULL) {
                call->seeded = 1;
                if (archive_max_seq(w->archive, call->room->name, room_on_archive_max, call) == 0) {
                    return;
                }
            }
            room_send_failed(call, "archive unavailable, retry");
            return;
        }
        int dup = reply->element[2]->integer != 0;
        if (!dup) {
            metrics_add(&w->metrics->slot[w->slot].messages_received, 1);
        }
        if (c->state == CONN_WS) {
            session_send_json(c, proto_encode_ack(id, call->room->name, reply->element[0]->integer,
                                                  reply->element[1]->integer, dup));
        }
        room_call_free(call);
        return;
    }
    room_send_failed(call, "message not confirmed durable; resend with the same id");
}

void room_chat(conn_t *c, const proto_req_t *req)
{
    worker_t *w = c->w;
    const char *id = req->has_id ? req->id : NULL;
    room_call_t *call = room_request_call(c, req);
    if (call == NULL) {
        return;
    }
    call->tail = proto_encode_chat_tail(c->sess.auth.user, req->content, req->attachments, id);
    if (call->tail == NULL) {
        room_call_free(call);
        session_send_error(c, id, PROTO_E_INTERNAL, "out of memory");
        return;
    }
    if (room_send(w, call) != 0) {
        room_call_free(call);
        session_send_error(c, id, PROTO_E_UNAVAILABLE, "storage unavailable, retry");
    }
}

void room_typing(conn_t *c, const proto_req_t *req)
{
    const char *id = req->has_id ? req->id : NULL;
    if (member_of(c, req->room) == NULL) {
        session_send_error(c, id, PROTO_E_NOT_JOINED, "join the room first");
        return;
    }
    store_typing(c->w, req->room, c->sess.auth.user, req->active);
}

/*
 * Answers history from payload texts, newest first (the Redis log's, then
 * the archive's). One more than the limit was asked for, to tell whether
 * older messages exist; the answer lists them ascending.
 */
static void room_history_answer(conn_t *c, const char *id, const char *room,
                                char *const *texts, size_t n, size_t limit)
{
    int more = n > limit;
    if (n > limit) {
        n = limit;
    }
    cJSON *root = cJSON_CreateObject();
    cJSON *p = NULL, *msgs = NULL;
    int ok = root != NULL && cJSON_AddStringToObject(root, "type", "history") != NULL &&
             (id == NULL || cJSON_AddStringToObject(root, "id", id) != NULL) &&
             (p = cJSON_AddObjectToObject(root, "payload")) != NULL &&
             cJSON_AddStringToObject(p, "room", room) != NULL &&
             (msgs = cJSON_AddArrayToObject(p, "messages")) != NULL &&
             cJSON_AddBoolToObject(p, "more", more) != NULL;
    for (size_t i = n; ok && i-- > 0;) {
        /* Stored payloads are JSON the server wrote: spliced in raw. */
        cJSON *item = cJSON_CreateRaw(texts[i]);
        ok = item != NULL && cJSON_AddItemToArray(msgs, item);
    }
    char *json = ok ? cJSON_PrintUnformatted(root) : NULL;
    cJSON_Delete(root);
    if (json == NULL) {
        session_send_error(c, id, PROTO_E_INTERNAL, "out of memory");
    } else {
        session_send_json(c, json);
    }
}

static void room_on_history_archive(worker_t *w, void *arg, char **found, int nfound)
{
    (void)w;
    room_call_t *call = arg;
    conn_t *c = call->conn;
    const char *id = call->has_id ? call->id : NULL;
    if (c->state == CONN_WS) {
        if (nfound < 0 && call->ntexts == 0) {
            session_send_error(c, id, PROTO_E_UNAVAILABLE, "history unavailable, retry");
        } else if (nfound < 0) {
            /* What Redis had, and "more" so the client pages on (and
             * retries the archive) from there. */
            room_history_answer(c, id, call->room->name, call->texts, call->ntexts,
                                call->ntexts > 0 ? call->ntexts - 1 : 0);
        } else {
            size_t total = call->ntexts + (size_t)nfound;
            char **all = calloc(total + 1, sizeof(*all));
            if (all == NULL) {
                session_send_error(c, id, PROTO_E_INTERNAL, "out of memory");
            } else {
                memcpy(all, call->texts, call->ntexts * sizeof(*all));
                memcpy(all + call->ntexts, found, (size_t)nfound * sizeof(*all));
                room_history_answer(c, id, call->room->name, all, total, (size_t)call->upto);
                free(all);
            }
        }
    }
    room_call_free(call);
}

static void room_on_history(worker_t *w, void *arg, redisReply *reply)
{
    room_call_t *call = arg;
    conn_t *c = call->conn;
    const char *id = call->has_id ? call->id : NULL;
    if (c->state != CONN_WS) {
        room_call_free(call);
        return;
    }
    if (reply == NULL || reply->type != REDIS_REPLY_ARRAY) {
        session_send_error(c, id, PROTO_E_UNAVAILABLE, "history unavailable, retry");
        room_call_free(call);
        return;
    }
    call->texts = calloc(reply->elements + 1, sizeof(char *));
    if (call->texts == NULL) {
        session_send_error(c, id, PROTO_E_INTERNAL, "out of memory");
        room_call_free(call);
        return;
    }
    int64_t oldest = call->before;
    for (size_t i = 0; i < reply->elements; i++) {
        int64_t seq;
        const char *payload;
        size_t len;
        if (store_entry(reply->element[i], &seq, &payload, &len) != 0 ||
            (call->texts[call->ntexts] = strndup(payload, len)) == NULL) {
            continue;
        }
        call->ntexts++;
        oldest = seq;
    }
    size_t want = (size_t)call->upto + 1;
    /* The recent log ran out before the page did: older messages live in
     * the archive, below the oldest the log still has. */
    if (w->archive != NULL && call->ntexts < want && (oldest < 0 || oldest > 1) &&
        archive_find(w->archive, call->room->name, oldest, (int)(want - call->ntexts),
                     room_on_history_archive, call) == 0) {
        return;
    }
    room_history_answer(c, id, call->room->name, call->texts, call->ntexts, (size_t)call->upto);
    room_call_free(call);
}

void room_history(conn_t *c, const proto_req_t *req)
{
    const char *id = req->has_id ? req->id : NULL;
    room_call_t *call = room_request_call(c, req);
    if (call == NULL) {
        return;
    }
    call->upto = req->limit;
    int64_t before = req->has_before ? req->before : -1;
    call->before = before;
    if (before == 0 || store_history(c->w, req->room, before, req->limit + 1, room_on_history, call) != 0) {
        if (before == 0) {
            /* Nothing precedes seq 1: answer without asking the store. */
            redisReply empty = { .type = REDIS_REPLY_ARRAY };
            room_on_history(c->w, call, &empty);
            return;
        }
        room_call_free(call);
        session_send_error(c, id, PROTO_E_UNAVAILABLE, "history unavailable, retry");
    }
}

static void room_on_presence(worker_t *w, void *arg, redisReply *reply)
{
    (void)w;
    room_call_t *call = arg;
    conn_t *c = call->conn;
    const char *id = call->has_id ? call->id : NULL;
    if (c->state == CONN_WS) {
        if (reply == NULL || reply->type != REDIS_REPLY_ARRAY) {
            session_send_error(c, id, PROTO_E_UNAVAILABLE, "presence unavailable, retry");
        } else {
            const char **users = calloc(reply->elements + 1, sizeof(*users));
            size_t n = 0;
            for (size_t i = 0; users != NULL && i < reply->elements; i++) {
                if (reply->element[i]->type == REDIS_REPLY_STRING) {
                    users[n++] = reply->element[i]->str;
                }
            }
            char *json = users != NULL ? proto_encode_presence(id, call->room->name, users, n) : NULL;
            free(users);
            if (json == NULL) {
                session_send_error(c, id, PROTO_E_INTERNAL, "out of memory");
            } else {
                session_send_json(c, json);
            }
        }
    }
    room_call_free(call);
}

void room_presence(conn_t *c, const proto_req_t *req)
{
    const char *id = req->has_id ? req->id : NULL;
    room_call_t *call = room_request_call(c, req);
    if (call == NULL) {
        return;
    }
    if (store_presence(c->w, req->room, room_on_presence, call) != 0) {
        room_call_free(call);
        session_send_error(c, id, PROTO_E_UNAVAILABLE, "presence unavailable, retry");
    }
}

/* "chatd:{R}" -> R */
static room_t *room_of_channel(worker_t *w, const char *channel, size_t clen)
{
    char name[PROTO_ROOM_MAX + 1];
    if (clen < 9 || clen - 8 > PROTO_ROOM_MAX + 1 || memcmp(channel, "chatd:{", 7) != 0 ||
        channel[clen - 1] != '}') {
        return NULL;
    }
    memcpy(name, channel + 7, clen - 8);
    name[clen - 8] = '\0';
    return room_find(w, name);
}

void room_on_bus_message(worker_t *w, const char *channel, size_t clen, const char *msg, size_t len)
{
    room_t *r = room_of_channel(w, channel, clen);
    if (r == NULL || len < 2) {
        return;
    }
    if (msg[0] == 'C') {
        /* "C<seq> <ts_us> <payload>" */
        char *end;
        long long seq = strtoll(msg + 1, &end, 10);
        if (*end != ' ') {
            return;
        }
        unsigned long long ts = strtoull(end + 1, &end, 10);
        if (*end != ' ' || seq <= 0) {
            return;
        }
        const char *payload = end + 1;
        frame_t *f = room_frame(seq, ts, payload, len - (size_t)(payload - msg));
        if (f != NULL) {
            room_accept_frame(w, r, f);
        }
        return;
    }
    if (msg[0] == 'X') {
        /* "X<user>\n<frame>": for everyone in the room but user. */
        const char *nl = memchr(msg, '\n', len);
        if (nl == NULL) {
            return;
        }
        size_t ulen = (size_t)(nl - msg - 1);
        const char *frame = nl + 1;
        size_t flen = len - (size_t)(frame - msg);
        member_t *next;
        for (member_t *m = r->members; m != NULL; m = next) {
            next = m->room_next;
            const char *u = m->conn->sess.auth.user;
            if (m->state == MEMBER_WAITING || (strlen(u) == ulen && memcmp(u, msg + 1, ulen) == 0)) {
                continue;
            }
            ws_send_text(m->conn, frame, flen);
        }
    }
}

void room_on_bus_subscribed(worker_t *w, const char *channel, size_t clen, int subscribed)
{
    room_t *r = room_of_channel(w, channel, clen);
    if (r == NULL) {
        return;
    }
    if (!subscribed) {
        r->sub = SUB_NONE;
        if (r->members != NULL) {
            room_subscribe(w, r);   /* someone joined while we were leaving */
        }
        return;
    }
    r->sub = SUB_LIVE;
    if (r->last_seq < 0) {
        /* New here: learn where the room stands. Messages published from
         * now on are already arriving and wait in pending. */
        room_call_t *call = room_call_new(NULL, r);
        if (call == NULL) {
            return;
        }
        r->syncing = 1;
        if (store_last_seq(w, r->name, room_on_last_seq, call) != 0) {
            r->syncing = 0;
            room_call_free(call);
        }
    } else {
        /* Back after an outage or a quick leave and rejoin: fetch what was
         * published meanwhile; members waiting since then start now and
         * receive it live. */
        room_fetch(w, r, r->last_seq + 1, -1);
        member_t *next;
        for (member_t *m = r->members; m != NULL; m = next) {
            next = m->room_next;
            if (m->state == MEMBER_WAITING) {
                member_start(w, m);
            }
        }
    }
}

void room_on_bus_up(worker_t *w)
{
    for (size_t i = 0; i < w->rooms_cap; i++) {
        for (room_t *r = w->rooms[i]; r != NULL; r = r->hnext) {
            if (r->members != NULL) {
                room_subscribe(w, r);
            }
        }
    }
}

void room_on_bus_down(worker_t *w)
{
    for (size_t i = 0; i < w->rooms_cap; i++) {
        for (room_t *r = w->rooms[i]; r != NULL; r = r->hnext) {
            r->sub = SUB_NONE;
        }
    }
}

void room_tick(worker_t *w)
{
    for (size_t i = 0; i < w->rooms_cap; i++) {
        room_t *next;
        for (room_t *r = w->rooms[i]; r != NULL; r = next) {
            next = r->hnext;
            if (r->members != NULL || r->ops != 0 || r->syncing) {
                continue;
            }
            if (r->sub == SUB_LIVE) {
                char chan[PROTO_ROOM_MAX + 16];
                size_t n = store_channel(r->name, chan, sizeof(chan));
                if (bus_unsubscribe(w->bus, chan, n) == 0) {
                    r->sub = SUB_LEAVING;
                } else {
                    r->sub = SUB_NONE;
                }
            } else if (r->sub == SUB_NONE) {
                room_destroy(w, r);
            }
        }
    }
}

void room_free_all(worker_t *w)
{
    for (size_t i = 0; i < w->rooms_cap; i++) {
        while (w->rooms[i] != NULL) {
            room_destroy(w, w->rooms[i]);
        }
    }
    free(w->rooms);
    w->rooms = NULL;
    w->rooms_cap = 0;
}

void room_each_local_user(worker_t *w, void (*fn)(worker_t *w, const char *room,
                                                  const char *user, void *arg), void *arg)
{
    for (size_t i = 0; i < w->rooms_cap; i++) {
        for (room_t *r = w->rooms[i]; r != NULL; r = r->hnext) {
            for (member_t *m = r->members; m != NULL; m = m->room_next) {
                /* Once per user: the first member of each user speaks. */
                int first = 1;
                for (member_t *o = r->members; o != m; o = o->room_next) {
                    if (strcmp(o->conn->sess.auth.user, m->conn->sess.auth.user) == 0) {
                        first = 0;
                        break;
                    }
                }
                if (first) {
                    fn(w, r->name, m->conn->sess.auth.user, arg);
                }
            }
        }
    }
}
