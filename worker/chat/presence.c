#include "presence.h"
#include "../data/store.h"
#include "../../common/log.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void presence_typing(conn_t *c, const proto_req_t *req)
{
    const char *id = req->has_id ? req->id : NULL;
    if (room_member_of(c, req->room) == NULL) {
        session_send_error(c, id, PROTO_E_NOT_JOINED, "join the room first");
        return;
    }
    store_typing(chat_of(c)->bus, req->room, session_of(c)->auth.user, req->active);
}

static void presence_on_reply(void *arg, redisReply *reply)
{
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

void presence_request(conn_t *c, const proto_req_t *req)
{
    const char *id = req->has_id ? req->id : NULL;
    room_call_t *call = room_request_call(c, req);
    if (call == NULL) {
        return;
    }
    if (store_presence(chat_of(c)->bus, req->room, presence_on_reply, call) != 0) {
        room_call_free(call);
        session_send_error(c, id, PROTO_E_UNAVAILABLE, "presence unavailable, retry");
    }
}

void presence_relay(room_t *r, const char *msg, size_t len)
{
    const char *nl = memchr(msg, '\n', len);
    if (nl == NULL) {
        return;
    }
    size_t ulen = (size_t)(nl - msg);
    const char *frame = nl + 1;
    size_t flen = len - (size_t)(frame - msg);
    wsframe_t *wf = NULL;
    member_t *next;
    for (member_t *m = r->members; m != NULL; m = next) {
        next = m->room_next;
        const char *u = session_of(m->conn)->auth.user;
        if (m->state == MEMBER_WAITING || (strlen(u) == ulen && memcmp(u, msg, ulen) == 0)) {
            continue;
        }
        /* Framed once, on the first receiver, and shared. */
        if (wf == NULL && (wf = wsframe_text(frame, flen, NULL, 0, NULL, 0)) == NULL) {
            return;     /* out of memory: an ephemeral event is lost, nothing else */
        }
        conn_send_frame(m->conn, wf);
    }
    wsframe_unref(wf);
}

void presence_member(chat_t *ch, room_t *r, const char *user, int joined)
{
    store_member(ch->bus, r->name, user, joined);
}

static void presence_assert_one(chat_t *ch, const char *room, const char *user)
{
    store_member(ch->bus, room, user, 1);
}

void presence_reassert(chat_t *ch)
{
    /* Entries written while Redis was away, or reaped because this
     * worker's heartbeat lapsed, are put back. */
    room_each_local_user(ch, presence_assert_one);
}
