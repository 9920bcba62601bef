#include "unread.h"
#include "delivery.h"
#include "inbox.h"
#include "../data/store.h"
#include "../net/conn.h"
#include "../../common/log.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The store's answer {seq, read cursor, unread, last ts}; 0 or -1. */
static int unread_parse(const redisReply *r, int64_t out[4])
{
    if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements != 4) {
        return -1;
    }
    for (size_t i = 0; i < 4; i++) {
        if (r->element[i]->type != REDIS_REPLY_INTEGER) {
            return -1;
        }
        out[i] = r->element[i]->integer;
    }
    return 0;
}

static void unread_on_join_state(void *arg, redisReply *reply)
{
    room_call_t *call = arg;
    conn_t *c = call->conn;
    room_t *r = call->room;
    member_t *m = c->state == CONN_WS ? room_member_of(c, r->name) : NULL;
    int64_t st[4];
    if (m == NULL || m->state != MEMBER_WAITING || m->join == NULL || m->join->serial != call->serial) {
        room_call_free(call);     /* left, or joined again since */
        return;
    }
    if (unread_parse(reply, st) != 0) {
        room_refuse_join(r->chat, m);
        room_call_free(call);
        return;
    }
    m->join->read_seq = st[1];
    m->join->unread = (int)st[2];
    m->join->read_ready = 1;
    if (r->sub == SUB_LIVE && r->last_seq >= 0) {
        delivery_start_member(r->chat, m);
    }
    room_call_free(call);
}

void unread_join(chat_t *ch, member_t *m)
{
    const char *user = session_of(m->conn)->auth.user;
    store_user_room(ch->bus, user, m->room->name);
    room_call_t *call = room_call_new(m->conn, m->room);
    if (call == NULL) {
        room_refuse_join(ch, m);
        return;
    }
    call->serial = m->join->serial;
    if (store_room_state(ch->bus, m->room->name, user, unread_on_join_state, call) != 0) {
        room_call_free(call);
        room_refuse_join(ch, m);
    }
}

static void unread_on_rejoined(void *arg, redisReply *reply)
{
    room_call_t *call = arg;
    conn_t *c = call->conn;
    member_t *m = c->state == CONN_WS ? room_member_of(c, call->room->name) : NULL;
    int64_t st[4];
    const char *id = call->has_id ? call->id : NULL;
    if (m != NULL && unread_parse(reply, st) == 0) {
        session_send_json(c, proto_encode_joined(id, call->room->name, m->last_seq, 0, st[1], (int)st[2]));
    } else if (c->state == CONN_WS) {
        session_send_error(c, id, PROTO_E_UNAVAILABLE, "storage unavailable, retry");
    }
    room_call_free(call);
}

void unread_rejoined(conn_t *c, const char *id, member_t *m)
{
    room_call_t *call = room_call_new(c, m->room);
    if (call == NULL) {
        session_send_error(c, id, PROTO_E_INTERNAL, "out of memory");
        return;
    }
    if (id != NULL) {
        call->has_id = 1;
        snprintf(call->id, sizeof(call->id), "%s", id);
    }
    if (store_room_state(chat_of(c)->bus, m->room->name, session_of(c)->auth.user, unread_on_rejoined,
                         call) != 0) {
        room_call_free(call);
        session_send_error(c, id, PROTO_E_UNAVAILABLE, "storage unavailable, retry");
    }
}

/* ------------------------------------------------------------- read */

static void unread_on_read(void *arg, redisReply *reply)
{
    room_call_t *call = arg;
    conn_t *c = call->conn;
    const char *id = call->has_id ? call->id : NULL;
    if (reply == NULL || reply->type != REDIS_REPLY_ARRAY || reply->elements != 2 ||
        reply->element[0]->type != REDIS_REPLY_INTEGER || reply->element[1]->type != REDIS_REPLY_INTEGER) {
        if (c->state == CONN_WS) {
            session_send_error(c, id, PROTO_E_UNAVAILABLE, "storage unavailable, retry");
        }
        room_call_free(call);
        return;
    }
    session_t *s = session_of(c);
    if (reply->element[0]->integer == 1) {
        /* The room heard it (while small); every other connection of the
         * user hears it on the user's channel, joined or not. */
        char *frame = proto_encode_receipt(call->room->name, s->auth.user, reply->element[1]->integer);
        char sid[48];
        session_id(s, sid, sizeof(sid));
        if (frame != NULL) {
            inbox_send(call->room->chat, s->auth.user, NULL, sid, frame);
            free(frame);
        }
    }
    if (c->state == CONN_WS) {
        session_send_json(c, proto_encode_ok(id));
    }
    room_call_free(call);
}

void unread_read(conn_t *c, const proto_req_t *req)
{
    const char *id = req->has_id ? req->id : NULL;
    room_call_t *call = room_request_call(c, req);
    if (call == NULL) {
        return;
    }
    if (store_read_cursor(chat_of(c)->bus, req->room, session_of(c)->auth.user, req->seq, unread_on_read,
                          call) != 0) {
        room_call_free(call);
        session_send_error(c, id, PROTO_E_UNAVAILABLE, "storage unavailable, retry");
    }
}

/* ------------------------------------------------------------ rooms */

/* One rooms request: the user's index, then one state read per room (on
 * the node of each room), answered when the last one is back. */
typedef struct {
    conn_t *conn;               /* referenced */
    int has_id;
    char id[PROTO_ID_MAX + 1];
    size_t n;
    size_t pending;
    int failed;
    struct unread_room_s {
        char name[PROTO_ROOM_MAX + 1];
        int64_t st[4];          /* seq, read cursor, unread, last ts */
        int ok;
    } rooms[];
} unread_rooms_t;

typedef struct {
    unread_rooms_t *req;
    size_t i;
} unread_slot_t;

static void unread_rooms_free(unread_rooms_t *q)
{
    conn_unref(q->conn);
    free(q);
}

static int unread_by_activity(const void *pa, const void *pb)
{
    const struct unread_room_s *a = pa, *b = pb;
    if (a->st[3] != b->st[3]) {
        return a->st[3] > b->st[3] ? -1 : 1;
    }
    return a->st[0] > b->st[0] ? -1 : a->st[0] < b->st[0];
}

static void unread_rooms_answer(unread_rooms_t *q)
{
    conn_t *c = q->conn;
    const char *id = q->has_id ? q->id : NULL;
    if (c->state != CONN_WS) {
        return;
    }
    if (q->failed) {
        session_send_error(c, id, PROTO_E_UNAVAILABLE, "storage unavailable, retry");
        return;
    }
    qsort(q->rooms, q->n, sizeof(q->rooms[0]), unread_by_activity);
    proto_room_state_t *out = calloc(q->n + 1, sizeof(*out));
    if (out == NULL) {
        session_send_error(c, id, PROTO_E_INTERNAL, "out of memory");
        return;
    }
    for (size_t i = 0; i < q->n; i++) {
        out[i].room = q->rooms[i].name;
        out[i].seq = q->rooms[i].st[0];
        out[i].read_seq = q->rooms[i].st[1];
        out[i].unread = (int)q->rooms[i].st[2];
    }
    session_send_json(c, proto_encode_rooms(id, out, q->n));
    free(out);
}

static void unread_on_room_state(void *arg, redisReply *reply)
{
    unread_slot_t *slot = arg;
    unread_rooms_t *q = slot->req;
    if (unread_parse(reply, q->rooms[slot->i].st) != 0) {
        q->failed = 1;
    }
    free(slot);
    if (--q->pending == 0) {
        unread_rooms_answer(q);
        unread_rooms_free(q);
    }
}

static void unread_on_index(void *arg, redisReply *reply)
{
    unread_rooms_t *probe = arg;
    conn_t *c = probe->conn;
    const char *id = probe->has_id ? probe->id : NULL;
    if (reply == NULL || reply->type != REDIS_REPLY_ARRAY) {
        if (c->state == CONN_WS) {
            session_send_error(c, id, PROTO_E_UNAVAILABLE, "storage unavailable, retry");
        }
        unread_rooms_free(probe);
        return;
    }
    size_t n = 0;
    for (size_t i = 0; i < reply->elements; i++) {
        n += reply->element[i]->type == REDIS_REPLY_STRING && proto_room_valid(reply->element[i]->str);
    }
    unread_rooms_t *q = calloc(1, sizeof(*q) + n * sizeof(q->rooms[0]));
    if (q == NULL) {
        if (c->state == CONN_WS) {
            session_send_error(c, id, PROTO_E_INTERNAL, "out of memory");
        }
        unread_rooms_free(probe);
        return;
    }
    q->conn = c;
    conn_ref(c);
    q->has_id = probe->has_id;
    memcpy(q->id, probe->id, sizeof(q->id));
    unread_rooms_free(probe);
    for (size_t i = 0; i < reply->elements; i++) {
        const redisReply *e = reply->element[i];
        if (e->type == REDIS_REPLY_STRING && proto_room_valid(e->str)) {
            snprintf(q->rooms[q->n++].name, sizeof(q->rooms[0].name), "%s", e->str);
        }
    }
    /* One extra count keeps q alive while the reads are sent. */
    q->pending = 1;
    chat_t *ch = chat_of(c);
    for (size_t i = 0; i < q->n; i++) {
        unread_slot_t *slot = malloc(sizeof(*slot));
        if (slot == NULL) {
            q->failed = 1;
            break;
        }
        slot->req = q;
        slot->i = i;
        q->pending++;
        if (store_room_state(ch->bus, q->rooms[i].name, session_of(c)->auth.user, unread_on_room_state,
                             slot) != 0) {
            q->pending--;
            q->failed = 1;
            free(slot);
            break;
        }
    }
    if (--q->pending == 0) {
        unread_rooms_answer(q);
        unread_rooms_free(q);
    }
}

void unread_rooms(conn_t *c, const proto_req_t *req)
{
    const char *id = req->has_id ? req->id : NULL;
    unread_rooms_t *probe = calloc(1, sizeof(*probe));
    if (probe == NULL) {
        session_send_error(c, id, PROTO_E_INTERNAL, "out of memory");
        return;
    }
    probe->conn = c;
    conn_ref(c);
    if (id != NULL) {
        probe->has_id = 1;
        snprintf(probe->id, sizeof(probe->id), "%s", id);
    }
    if (store_user_rooms(chat_of(c)->bus, session_of(c)->auth.user, unread_on_index, probe) != 0) {
        unread_rooms_free(probe);
        session_send_error(c, id, PROTO_E_UNAVAILABLE, "storage unavailable, retry");
    }
}
