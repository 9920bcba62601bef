#include "message.h"
#include "room.h"
#include "inbox.h"
#include "../data/archive.h"
#include "../data/store.h"
#include "../../common/log.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void message_on_sent(void *arg, int status, const store_ack_t *ack);

/* A message accepted in a direct conversation: the other user's
 * connections that have not joined it hear of it, wherever they are, and
 * the room joins that user's rooms. */
static void message_notify(chat_t *ch, const char *room, const char *from, int64_t seq)
{
    char a[PROTO_USER_MAX + 1], b[PROTO_USER_MAX + 1];
    if (proto_dm_users(room, a, b) != 1) {
        return;
    }
    const char *to = strcmp(from, a) == 0 ? b : a;
    store_user_room(ch->bus, to, room);
    char *frame = proto_encode_notify(room, from, seq);
    if (frame != NULL) {
        inbox_send(ch, to, room, NULL, frame);
        free(frame);
    }
}

static int message_store(chat_t *ch, room_call_t *call)
{
    conn_t *c = call->conn;
    const char *user = session_of(c)->auth.user;
    const char *id = call->has_id ? call->id : NULL;
    if (call->event.kind == NULL) {
        return store_send(ch->bus, call->room->name, user, id, call->tail, message_on_sent, call);
    }
    return store_event(ch->bus, call->room->name, user, id, call->tail, &call->event, message_on_sent, call);
}

static void message_failed(room_call_t *call, const char *why)
{
    conn_t *c = call->conn;
    if (c->state == CONN_WS) {
        session_send_error(c, call->has_id ? call->id : NULL, PROTO_E_UNAVAILABLE, why);
    }
    room_call_free(call);
}

static void message_on_seeded(void *arg, redisReply *reply)
{
    room_call_t *call = arg;
    chat_t *ch = call->room->chat;
    if (reply == NULL || reply->type == REDIS_REPLY_ERROR || call->conn->state != CONN_WS ||
        message_store(ch, call) != 0) {
        message_failed(call, "storage unavailable, retry");
    }
}

/* The archive's highest seq for a room whose Redis counter is missing:
 * the counter continues from there rather than from 1. */
static void message_on_archive_max(void *arg, int64_t seq)
{
    room_call_t *call = arg;
    chat_t *ch = call->room->chat;
    if (seq < 0 || call->conn->state != CONN_WS ||
        store_seed_seq(ch->bus, call->room->name, seq, message_on_seeded, call) != 0) {
        message_failed(call, "archive unavailable, retry");
    }
}

/* The archive's copy of an event's target that the log no longer holds:
 * the event goes to the store again, with it. */
static void message_on_archived_target(void *arg, int found, const char *payload, const char *state)
{
    room_call_t *call = arg;
    chat_t *ch = call->room->chat;
    conn_t *c = call->conn;
    const char *id = call->has_id ? call->id : NULL;
    if (c->state != CONN_WS) {
        room_call_free(call);
        return;
    }
    if (found < 0) {
        message_failed(call, "archive unavailable, retry");
        return;
    }
    if (found != 1) {
        session_send_error(c, id, PROTO_E_NOT_FOUND, "no such message in this room");
        room_call_free(call);
        return;
    }
    call->seeded = 1;
    call->seed_msg = strdup(payload);
    call->seed_state = strdup(state);
    call->event.seed_msg = call->seed_msg;
    call->event.seed_state = call->seed_state;
    if (call->seed_msg == NULL || call->seed_state == NULL) {
        session_send_error(c, id, PROTO_E_INTERNAL, "out of memory");
        room_call_free(call);
        return;
    }
    if (message_store(ch, call) != 0) {
        message_failed(call, "storage unavailable, retry");
    }
}

static void message_on_sent(void *arg, int status, const store_ack_t *ack)
{
    room_call_t *call = arg;
    chat_t *ch = call->room->chat;
    conn_t *c = call->conn;
    const char *id = call->has_id ? call->id : NULL;
    switch (status) {
    case STORE_OK:
        /* A duplicate too: with --ack-replicas its resend may just have
         * committed the message, which queued it for the archive. */
        archive_note_room(ch->archive, call->room->name);
        if (!ack->duplicate) {
            metrics_add(&ch->metrics->messages_received, 1);
            if (call->event.kind == NULL) {
                message_notify(ch, call->room->name, session_of(c)->auth.user, ack->seq);
            }
        }
        if (c->state == CONN_WS) {
            session_send_json(c, proto_encode_ack(id, call->room->name, ack->seq, ack->ts, ack->duplicate));
        }
        room_call_free(call);
        return;
    case STORE_NO_COUNTER:
        if (!call->seeded && c->state == CONN_WS && ch->archive != NULL) {
            call->seeded = 1;
            if (archive_max_seq(ch->archive, call->room->name, message_on_archive_max, call) == 0) {
                return;
            }
        }
        message_failed(call, "archive unavailable, retry");
        return;
    case STORE_IN_ARCHIVE:
        if (call->seeded || c->state != CONN_WS || ch->archive == NULL ||
            archive_get(ch->archive, call->room->name, call->event.target, message_on_archived_target, call) != 0) {
            message_failed(call, "archive unavailable, retry");
        }
        return;
    case STORE_NOT_FOUND:
        if (c->state == CONN_WS) {
            session_send_error(c, id, PROTO_E_NOT_FOUND, "no such message in this room");
        }
        room_call_free(call);
        return;
    case STORE_FORBIDDEN:
        if (c->state == CONN_WS) {
            session_send_error(c, id, PROTO_E_FORBIDDEN, "not your message");
        }
        room_call_free(call);
        return;
    case STORE_TOO_MANY:
        if (c->state == CONN_WS) {
            session_send_error(c, id, PROTO_E_TOO_LARGE, "a message has at most 20 different reactions");
        }
        room_call_free(call);
        return;
    case STORE_NOT_DURABLE:
        /* Stored, but not yet on enough replicas: a failover now could
         * lose it. The resend with the same id answers as a duplicate
         * once it is durable, or stores it anew if it was lost. */
        message_failed(call, "message not yet replicated; resend with the same id");
        return;
    default:
        message_failed(call, "message not confirmed durable; resend with the same id");
        return;
    }
}

void message_chat(conn_t *c, const proto_req_t *req)
{
    chat_t *ch = chat_of(c);
    const char *id = req->has_id ? req->id : NULL;
    room_call_t *call = room_request_call(c, req);
    if (call == NULL) {
        return;
    }
    call->tail = proto_encode_chat_tail(session_of(c)->auth.user, req->content, req->attachments, req->e2e, id);
    if (call->tail == NULL) {
        room_call_free(call);
        session_send_error(c, id, PROTO_E_INTERNAL, "out of memory");
        return;
    }
    if (message_store(ch, call) != 0) {
        room_call_free(call);
        session_send_error(c, id, PROTO_E_UNAVAILABLE, "storage unavailable, retry");
    }
}

void message_event(conn_t *c, const proto_req_t *req)
{
    chat_t *ch = chat_of(c);
    const char *id = req->has_id ? req->id : NULL;
    proto_event_t kind = req->type == PROTO_EDIT ? PROTO_EV_EDIT
                         : req->type == PROTO_DELETE ? PROTO_EV_DELETE : PROTO_EV_REACTION;
    room_call_t *call = room_request_call(c, req);
    if (call == NULL) {
        return;
    }
    call->tail = proto_encode_event_tail(kind, session_of(c)->auth.user, req, id);
    size_t elen = req->emoji != NULL ? strlen(req->emoji) + 1 : 0;
    call->emoji = elen > 0 ? malloc(elen) : NULL;
    if (call->tail == NULL || (elen > 0 && call->emoji == NULL)) {
        room_call_free(call);
        session_send_error(c, id, PROTO_E_INTERNAL, "out of memory");
        return;
    }
    if (elen > 0) {
        memcpy(call->emoji, req->emoji, elen);
    }
    call->event.kind = proto_event_name(kind);
    call->event.target = req->target;
    call->event.admin = session_of(c)->auth.admin;
    call->event.emoji = call->emoji;
    call->event.on = req->on;
    if (message_store(ch, call) != 0) {
        room_call_free(call);
        session_send_error(c, id, PROTO_E_UNAVAILABLE, "storage unavailable, retry");
    }
}
