#include "inbox.h"
#include "room.h"
#include "../data/bus.h"
#include "../data/store.h"
#include "../../common/buf.h"
#include "../../common/log.h"

#include <stdlib.h>
#include <string.h>

/*
 * One user held by this worker. Its channel follows the same states as a
 * room's: subscribed while the user has a session here, unsubscribed on
 * the tick after the last one left, freed once Redis confirmed.
 */
struct inbox_s {
    inbox_t *hnext;
    session_t *sessions;        /* linked through session_t.inbox_next */
    uint8_t sub;                /* SUB_* of room.h */
    char user[];
};

static size_t inbox_hash(const char *s)
{
    size_t h = 5381;
    for (; *s != '\0'; s++) {
        h = h * 33 + (unsigned char)*s;
    }
    return h;
}

static inbox_t *inbox_find(chat_t *ch, const char *user)
{
    if (ch->inboxes_cap == 0) {
        return NULL;
    }
    for (inbox_t *ib = ch->inboxes[inbox_hash(user) & (ch->inboxes_cap - 1)]; ib != NULL; ib = ib->hnext) {
        if (strcmp(ib->user, user) == 0) {
            return ib;
        }
    }
    return NULL;
}

static int inbox_table_grow(chat_t *ch)
{
    size_t cap = ch->inboxes_cap == 0 ? 64 : ch->inboxes_cap * 2;
    inbox_t **t = calloc(cap, sizeof(*t));
    if (t == NULL) {
        return -1;
    }
    for (size_t i = 0; i < ch->inboxes_cap; i++) {
        inbox_t *next;
        for (inbox_t *ib = ch->inboxes[i]; ib != NULL; ib = next) {
            next = ib->hnext;
            size_t b = inbox_hash(ib->user) & (cap - 1);
            ib->hnext = t[b];
            t[b] = ib;
        }
    }
    free(ch->inboxes);
    ch->inboxes = t;
    ch->inboxes_cap = cap;
    return 0;
}

static void inbox_destroy(chat_t *ch, inbox_t *ib)
{
    inbox_t **pp = &ch->inboxes[inbox_hash(ib->user) & (ch->inboxes_cap - 1)];
    while (*pp != ib) {
        pp = &(*pp)->hnext;
    }
    *pp = ib->hnext;
    ch->ninboxes--;
    free(ib);
}

static void inbox_subscribe(chat_t *ch, inbox_t *ib)
{
    char chan[128];
    size_t n = store_user_channel(ib->user, chan, sizeof(chan));
    if (ib->sub == SUB_NONE && n > 0 && bus_subscribe(ch->bus, chan, n) == 0) {
        ib->sub = SUB_PENDING;
    }
}

void inbox_add(conn_t *c)
{
    chat_t *ch = chat_of(c);
    session_t *s = session_of(c);
    inbox_t *ib = inbox_find(ch, s->auth.user);
    if (ib == NULL) {
        if (ch->ninboxes + 1 > ch->inboxes_cap / 2 && inbox_table_grow(ch) != 0) {
            log_warn("event=inbox_oom user=%s", s->auth.user);
            return;
        }
        size_t n = strlen(s->auth.user);
        ib = calloc(1, sizeof(*ib) + n + 1);
        if (ib == NULL) {
            log_warn("event=inbox_oom user=%s", s->auth.user);
            return;
        }
        memcpy(ib->user, s->auth.user, n + 1);
        size_t b = inbox_hash(ib->user) & (ch->inboxes_cap - 1);
        ib->hnext = ch->inboxes[b];
        ch->inboxes[b] = ib;
        ch->ninboxes++;
    }
    s->inbox = ib;
    s->inbox_next = ib->sessions;
    ib->sessions = s;
    inbox_subscribe(ch, ib);
}

void inbox_remove(conn_t *c)
{
    session_t *s = session_of(c);
    inbox_t *ib = s->inbox;
    if (ib == NULL) {
        return;
    }
    session_t **pp = &ib->sessions;
    while (*pp != NULL && *pp != s) {
        pp = &(*pp)->inbox_next;
    }
    if (*pp == s) {
        *pp = s->inbox_next;
    }
    s->inbox = NULL;
    s->inbox_next = NULL;
}

/* The message on a user's channel: "U<skip room>\n<skip session>\n<frame>". */
static int inbox_message(buf_t *msg, const char *skip_room, const char *skip_session, const char *frame)
{
    const char *r = skip_room != NULL ? skip_room : "";
    const char *sid = skip_session != NULL ? skip_session : "";
    return buf_append(msg, "U", 1) == 0 && buf_append(msg, r, strlen(r)) == 0 &&
           buf_append(msg, "\n", 1) == 0 && buf_append(msg, sid, strlen(sid)) == 0 &&
           buf_append(msg, "\n", 1) == 0 && buf_append(msg, frame, strlen(frame)) == 0 ? 0 : -1;
}

void inbox_send(chat_t *ch, const char *user, const char *skip_room, const char *skip_session,
                const char *frame)
{
    buf_t msg = { 0 };
    if (inbox_message(&msg, skip_room, skip_session, frame) == 0) {
        store_user_publish(ch->bus, user, msg.data, msg.len);
    }
    buf_free(&msg);
}

int inbox_send_counted(chat_t *ch, const char *user, const char *frame, store_cb_t *cb, void *arg)
{
    buf_t msg = { 0 };
    int rc = inbox_message(&msg, NULL, NULL, frame);
    if (rc == 0) {
        rc = store_user_publish_counted(ch->bus, user, msg.data, msg.len, cb, arg);
    }
    buf_free(&msg);
    return rc;
}

/* "chatd:u:{U}" -> the inbox of U, or NULL. */
static inbox_t *inbox_of_channel(chat_t *ch, const char *channel, size_t clen)
{
    char user[PROTO_USER_MAX + 1];
    if (clen < 11 || clen - 10 > PROTO_USER_MAX || memcmp(channel, "chatd:u:{", 9) != 0 ||
        channel[clen - 1] != '}') {
        return NULL;
    }
    memcpy(user, channel + 9, clen - 10);
    user[clen - 10] = '\0';
    return inbox_find(ch, user);
}

void inbox_on_bus_message(chat_t *ch, const char *channel, size_t clen, const char *msg, size_t len)
{
    inbox_t *ib = inbox_of_channel(ch, channel, clen);
    if (ib == NULL || len < 3 || msg[0] != 'U') {
        return;
    }
    const char *end = msg + len;
    const char *room = msg + 1;
    const char *nl1 = memchr(room, '\n', (size_t)(end - room));
    const char *sid = nl1 != NULL ? nl1 + 1 : NULL;
    const char *nl2 = sid != NULL ? memchr(sid, '\n', (size_t)(end - sid)) : NULL;
    if (nl2 == NULL || (size_t)(nl1 - room) > PROTO_ROOM_MAX || (size_t)(nl2 - sid) >= 48) {
        return;
    }
    char skip_room[PROTO_ROOM_MAX + 1], skip_sid[48];
    memcpy(skip_room, room, (size_t)(nl1 - room));
    skip_room[nl1 - room] = '\0';
    memcpy(skip_sid, sid, (size_t)(nl2 - sid));
    skip_sid[nl2 - sid] = '\0';
    const char *frame = nl2 + 1;
    /* Framed once, whatever the number of connections. */
    wsframe_t *wf = wsframe_text(frame, (size_t)(end - frame), NULL, 0, NULL, 0);
    if (wf == NULL) {
        return;
    }
    session_t *next;
    for (session_t *s = ib->sessions; s != NULL; s = next) {
        next = s->inbox_next;
        if (s->conn.state != CONN_WS) {
            continue;
        }
        if (skip_sid[0] != '\0') {
            char id[48];
            session_id(s, id, sizeof(id));
            if (strcmp(id, skip_sid) == 0) {
                continue;
            }
        }
        if (skip_room[0] != '\0' && room_member_of(&s->conn, skip_room) != NULL) {
            continue;
        }
        conn_send_frame(&s->conn, wf);
    }
    wsframe_unref(wf);
}

void inbox_on_bus_subscribed(chat_t *ch, const char *channel, size_t clen, int subscribed)
{
    inbox_t *ib = inbox_of_channel(ch, channel, clen);
    if (ib == NULL) {
        return;
    }
    if (subscribed) {
        ib->sub = SUB_LIVE;
        return;
    }
    ib->sub = SUB_NONE;
    if (ib->sessions != NULL) {
        inbox_subscribe(ch, ib);    /* a session came while we were leaving */
    }
}

void inbox_on_bus_up(chat_t *ch)
{
    for (size_t i = 0; i < ch->inboxes_cap; i++) {
        for (inbox_t *ib = ch->inboxes[i]; ib != NULL; ib = ib->hnext) {
            if (ib->sessions != NULL) {
                inbox_subscribe(ch, ib);
            }
        }
    }
}

void inbox_on_bus_down(chat_t *ch)
{
    for (size_t i = 0; i < ch->inboxes_cap; i++) {
        for (inbox_t *ib = ch->inboxes[i]; ib != NULL; ib = ib->hnext) {
            ib->sub = SUB_NONE;
        }
    }
}

void inbox_tick(chat_t *ch)
{
    for (size_t i = 0; i < ch->inboxes_cap; i++) {
        inbox_t *next;
        for (inbox_t *ib = ch->inboxes[i]; ib != NULL; ib = next) {
            next = ib->hnext;
            if (ib->sessions != NULL) {
                inbox_subscribe(ch, ib);    /* a no-op unless it is SUB_NONE */
                continue;
            }
            if (ib->sub == SUB_LIVE) {
                char chan[128];
                size_t n = store_user_channel(ib->user, chan, sizeof(chan));
                ib->sub = n > 0 && bus_unsubscribe(ch->bus, chan, n) == 0 ? SUB_LEAVING : SUB_NONE;
            } else if (ib->sub == SUB_NONE) {
                inbox_destroy(ch, ib);
            }
        }
    }
}

void inbox_free_all(chat_t *ch)
{
    for (size_t i = 0; i < ch->inboxes_cap; i++) {
        while (ch->inboxes[i] != NULL) {
            inbox_destroy(ch, ch->inboxes[i]);
        }
    }
    free(ch->inboxes);
    ch->inboxes = NULL;
    ch->inboxes_cap = 0;
}
