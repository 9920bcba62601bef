#include "room.h"
#include "delivery.h"
#include "presence.h"
#include "unread.h"
#include "../data/bus.h"
#include "../data/store.h"
#include "../net/conn.h"
#include "../../common/log.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* How long a join may wait for its room before it is told to retry. */
#define ROOM_JOIN_WAIT_MS 5000

static uint64_t room_hash(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s != '\0'; s++) {
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    }
    return h;
}

static room_t *room_find(chat_t *ch, const char *name)
{
    if (ch->rooms_cap == 0) {
        return NULL;
    }
    for (room_t *r = ch->rooms[room_hash(name) & (ch->rooms_cap - 1)]; r != NULL; r = r->hnext) {
        if (strcmp(r->name, name) == 0) {
            return r;
        }
    }
    return NULL;
}

static int room_table_grow(chat_t *ch)
{
    size_t cap = ch->rooms_cap == 0 ? 64 : ch->rooms_cap * 2;
    room_t **t = calloc(cap, sizeof(*t));
    if (t == NULL) {
        return -1;
    }
    for (size_t i = 0; i < ch->rooms_cap; i++) {
        room_t *r = ch->rooms[i];
        while (r != NULL) {
            room_t *next = r->hnext;
            size_t b = room_hash(r->name) & (cap - 1);
            r->hnext = t[b];
            t[b] = r;
            r = next;
        }
    }
    free(ch->rooms);
    ch->rooms = t;
    ch->rooms_cap = cap;
    return 0;
}

static room_t *room_create(chat_t *ch, const char *name)
{
    if (ch->nrooms + 1 > ch->rooms_cap / 2 && room_table_grow(ch) != 0) {
        return NULL;
    }
    room_t *r = calloc(1, sizeof(*r));
    if (r == NULL) {
        return NULL;
    }
    snprintf(r->name, sizeof(r->name), "%s", name);
    r->chat = ch;
    r->last_seq = -1;
    size_t b = room_hash(name) & (ch->rooms_cap - 1);
    r->hnext = ch->rooms[b];
    ch->rooms[b] = r;
    ch->nrooms++;
    return r;
}

static void room_destroy(chat_t *ch, room_t *r)
{
    room_t **pp = &ch->rooms[room_hash(r->name) & (ch->rooms_cap - 1)];
    while (*pp != r) {
        pp = &(*pp)->hnext;
    }
    *pp = r->hnext;
    ch->nrooms--;
    delivery_free_frames(r->pending);
    free(r);
}

static void room_subscribe(chat_t *ch, room_t *r)
{
    if (r->sub != SUB_NONE) {
        return;
    }
    char chan[PROTO_ROOM_MAX + 16];
    size_t n = store_channel(r->name, chan, sizeof(chan));
    if (bus_subscribe(ch->bus, chan, n) == 0) {
        r->sub = SUB_PENDING;
    }
}

room_call_t *room_call_new(conn_t *c, room_t *r)
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

void room_call_free(room_call_t *call)
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
    free(call->emoji);
    free(call->seed_msg);
    free(call->seed_state);
    free(call->to);
    free(call->key_id);
    free(call->wrapped);
    free(call);
}

member_t *room_member_of(conn_t *c, const char *room)
{
    for (member_t *m = session_of(c)->members; m != NULL; m = m->conn_next) {
        if (strcmp(m->room->name, room) == 0) {
            return m;
        }
    }
    return NULL;
}

static int room_user_count(const room_t *r, const char *user)
{
    int n = 0;
    for (const member_t *m = r->members; m != NULL; m = m->room_next) {
        n += strcmp(session_of(m->conn)->auth.user, user) == 0;
    }
    return n;
}

static void room_member_remove(chat_t *ch, member_t *m)
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
    member_t **pp = &session_of(c)->members;
    while (*pp != m) {
        pp = &(*pp)->conn_next;
    }
    *pp = m->conn_next;
    session_of(c)->nrooms--;
    delivery_end_join(m);
    if (room_user_count(r, session_of(c)->auth.user) == 0) {
        presence_member(ch, r, session_of(c)->auth.user, 0);
    }
    pool_release(&ch->members_pool, m);
}

int room_allowed(const auth_t *auth, const char *room, const char **why)
{
    char dm_a[PROTO_USER_MAX + 1], dm_b[PROTO_USER_MAX + 1];
    int dm = proto_dm_users(room, dm_a, dm_b);
    if (dm < 0) {
        *why = "a dm: room must be dm:A:B with A < B, two user names";
        return 0;
    }
    if (dm > 0 && strcmp(auth->user, dm_a) != 0 && strcmp(auth->user, dm_b) != 0) {
        *why = "a direct conversation of two other users";
        return 0;
    }
    /* A direct conversation belongs to its two users, whatever a token's
     * rooms claim says. */
    if (dm == 0 && !auth_room_allowed(auth, room)) {
        *why = "your token does not allow this room";
        return 0;
    }
    return 1;
}

void room_join(conn_t *c, const proto_req_t *req)
{
    chat_t *ch = chat_of(c);
    const char *id = req->has_id ? req->id : NULL;
    const char *why;
    if (!room_allowed(&session_of(c)->auth, req->room, &why)) {
        session_send_error(c, id, PROTO_E_FORBIDDEN, why);
        return;
    }
    member_t *m = room_member_of(c, req->room);
    if (m != NULL) {
        /* Already a member: nothing changes, the client learns where it is. */
        unread_rejoined(c, id, m);
        return;
    }
    if (session_of(c)->nrooms >= ch->cfg->max_rooms) {
        session_send_error(c, id, PROTO_E_FORBIDDEN, "joined too many rooms");
        return;
    }
    char chan[PROTO_ROOM_MAX + 16];
    size_t clen = store_channel(req->room, chan, sizeof(chan));
    if (!bus_ready(ch->bus, chan, clen)) {
        session_send_error(c, id, PROTO_E_UNAVAILABLE, "storage unavailable, retry");
        return;
    }
    room_t *r = room_find(ch, req->room);
    if (r == NULL && (r = room_create(ch, req->room)) == NULL) {
        session_send_error(c, id, PROTO_E_INTERNAL, "out of memory");
        return;
    }
    m = pool_alloc(&ch->members_pool);
    if (m == NULL) {
        session_send_error(c, id, PROTO_E_INTERNAL, "out of memory");
        return;
    }
    m->room = r;
    m->conn = c;
    size_t idlen = req->has_id ? strlen(req->id) : 0;
    m->join = malloc(sizeof(*m->join) + idlen + 1);
    if (m->join == NULL) {
        pool_release(&ch->members_pool, m);
        session_send_error(c, id, PROTO_E_INTERNAL, "out of memory");
        return;
    }
    m->join->serial = ++ch->next_serial;
    m->join->started_ms = uv_now(ch->loop);
    m->join->read_ready = 0;
    m->join->since = req->has_since ? req->since : -1;
    m->join->held = m->join->held_tail = NULL;
    memcpy(m->join->id, req->has_id ? req->id : "", idlen + 1);
    int first_here = room_user_count(r, session_of(c)->auth.user) == 0;
    m->room_next = r->members;
    if (r->members != NULL) {
        r->members->room_prev = m;
    }
    r->members = m;
    r->nmembers++;
    m->conn_next = session_of(c)->members;
    session_of(c)->members = m;
    session_of(c)->nrooms++;
    if (first_here) {
        presence_member(ch, r, session_of(c)->auth.user, 1);
    }
    room_subscribe(ch, r);
    /* joined carries the user's read cursor and unread count: the member
     * starts once both the room and those are known. */
    unread_join(ch, m);
}

void room_leave(conn_t *c, const proto_req_t *req)
{
    const char *id = req->has_id ? req->id : NULL;
    member_t *m = room_member_of(c, req->room);
    if (m == NULL) {
        session_send_error(c, id, PROTO_E_NOT_JOINED, "not a member of this room");
        return;
    }
    room_member_remove(chat_of(c), m);
    session_send_json(c, proto_encode_left(id, req->room));
}

void room_leave_all(conn_t *c)
{
    while (session_of(c)->members != NULL) {
        room_member_remove(chat_of(c), session_of(c)->members);
    }
}

/*
 * The call of a request that needs the room joined: answers not_joined (or
 * internal) itself and returns NULL, or returns the call with the
 * request's id, holding c and the room.
 */
room_call_t *room_request_relay(conn_t *c, const proto_req_t *req)
{
    /* A token's claims of another user cannot be known here: what is
     * checked of the receiver is its name and the dm: rule; its own
     * claims are checked when it joins. */
    auth_t to = { .rooms = NULL };
    snprintf(to.user, sizeof(to.user), "%s", req->to);
    const char *why;
    if (!room_allowed(&to, req->room, &why)) {
        session_send_error(c, req->has_id ? req->id : NULL, PROTO_E_FORBIDDEN, "the receiver may not use this room");
        return NULL;
    }
    return room_request_call(c, req);
}

room_call_t *room_request_call(conn_t *c, const proto_req_t *req)
{
    const char *id = req->has_id ? req->id : NULL;
    member_t *m = room_member_of(c, req->room);
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

/* "chatd:{R}" -> R */
static room_t *room_of_channel(chat_t *ch, const char *channel, size_t clen)
{
    char name[PROTO_ROOM_MAX + 1];
    if (clen < 9 || clen - 8 > PROTO_ROOM_MAX || memcmp(channel, "chatd:{", 7) != 0 ||
        channel[clen - 1] != '}') {
        return NULL;
    }
    memcpy(name, channel + 7, clen - 8);
    name[clen - 8] = '\0';
    return room_find(ch, name);
}

void room_on_bus_message(chat_t *ch, const char *channel, size_t clen, const char *msg, size_t len)
{
    room_t *r = room_of_channel(ch, channel, clen);
    if (r == NULL || len < 2) {
        return;
    }
    /* 'C': a chat message with its seq, 'E' another room event with its
     * seq and type; 'X': ephemeral (member, typing). */
    if (msg[0] == 'C' || msg[0] == 'E') {
        delivery_on_published(ch, r, msg[0] == 'E', msg + 1, len - 1);
    } else if (msg[0] == 'X') {
        presence_relay(r, msg + 1, len - 1);
    }
}

void room_on_bus_subscribed(chat_t *ch, const char *channel, size_t clen, int subscribed)
{
    room_t *r = room_of_channel(ch, channel, clen);
    if (r == NULL) {
        return;
    }
    if (!subscribed) {
        r->sub = SUB_NONE;
        if (r->members != NULL) {
            room_subscribe(ch, r);   /* someone joined while we were leaving */
        }
        return;
    }
    r->sub = SUB_LIVE;
    delivery_sync(ch, r);
}

void room_on_bus_up(chat_t *ch)
{
    for (size_t i = 0; i < ch->rooms_cap; i++) {
        for (room_t *r = ch->rooms[i]; r != NULL; r = r->hnext) {
            if (r->members != NULL) {
                room_subscribe(ch, r);
            }
        }
    }
}

void room_on_bus_down(chat_t *ch)
{
    for (size_t i = 0; i < ch->rooms_cap; i++) {
        for (room_t *r = ch->rooms[i]; r != NULL; r = r->hnext) {
            r->sub = SUB_NONE;
        }
    }
}

/*
 * A join waits for the room's subscription and last seq; while the node
 * that holds them is failing over that can take a while, but a client
 * must not wait forever: past ROOM_JOIN_WAIT_MS it is told to retry.
 */
void room_refuse_join(chat_t *ch, member_t *m)
{
    conn_t *c = m->conn;
    char id[PROTO_ID_MAX + 1];
    snprintf(id, sizeof(id), "%s", m->join->id);
    room_member_remove(ch, m);
    session_send_error(c, id[0] != '\0' ? id : NULL, PROTO_E_UNAVAILABLE, "storage unavailable, retry");
}

static void room_expire_joins(chat_t *ch, room_t *r)
{
    uint64_t now = uv_now(ch->loop);
    member_t *next;
    for (member_t *m = r->members; m != NULL; m = next) {
        next = m->room_next;
        if (m->state != MEMBER_WAITING || now - m->join->started_ms < ROOM_JOIN_WAIT_MS) {
            continue;
        }
        log_warn("event=join_expired room=%s sub=%d last_seq=%" PRId64 " read_state=%d", r->name, r->sub,
                 r->last_seq, m->join->read_ready);
        room_refuse_join(ch, m);
    }
}

void room_tick(chat_t *ch)
{
    for (size_t i = 0; i < ch->rooms_cap; i++) {
        room_t *next;
        for (room_t *r = ch->rooms[i]; r != NULL; r = next) {
            next = r->hnext;
            if (r->members != NULL && r->sub == SUB_NONE) {
                /* Its node's link was down when the room last tried (a
                 * failover, a slot that moved): try again. */
                room_subscribe(ch, r);
            }
            if (r->members != NULL) {
                room_expire_joins(ch, r);
                if (r->members != NULL && r->sub == SUB_LIVE) {
                    delivery_retry(ch, r);
                }
            }
            if (r->members != NULL || r->ops != 0 || r->syncing) {
                continue;
            }
            if (r->sub == SUB_LIVE) {
                char chan[PROTO_ROOM_MAX + 16];
                size_t n = store_channel(r->name, chan, sizeof(chan));
                if (bus_unsubscribe(ch->bus, chan, n) == 0) {
                    r->sub = SUB_LEAVING;
                } else {
                    r->sub = SUB_NONE;
                }
            } else if (r->sub == SUB_NONE) {
                room_destroy(ch, r);
            }
        }
    }
}

void room_free_all(chat_t *ch)
{
    for (size_t i = 0; i < ch->rooms_cap; i++) {
        while (ch->rooms[i] != NULL) {
            room_destroy(ch, ch->rooms[i]);
        }
    }
    free(ch->rooms);
    ch->rooms = NULL;
    ch->rooms_cap = 0;
    pool_free(&ch->members_pool);
}

void room_each_local_user(chat_t *ch, void (*fn)(chat_t *ch, const char *room, const char *user))
{
    for (size_t i = 0; i < ch->rooms_cap; i++) {
        for (room_t *r = ch->rooms[i]; r != NULL; r = r->hnext) {
            for (member_t *m = r->members; m != NULL; m = m->room_next) {
                /* Once per user: the first member of each user speaks. */
                int first = 1;
                for (member_t *o = r->members; o != m; o = o->room_next) {
                    if (strcmp(session_of(o->conn)->auth.user, session_of(m->conn)->auth.user) == 0) {
                        first = 0;
                        break;
                    }
                }
                if (first) {
                    fn(ch, r->name, session_of(m->conn)->auth.user);
                }
            }
        }
    }
}
