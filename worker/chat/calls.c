#include "calls.h"
#include "inbox.h"
#include "room.h"
#include "session.h"

#include <stdio.h>
#include <stdlib.h>

static void calls_on_sent(void *arg, redisReply *r)
{
    room_call_t *call = arg;
    conn_t *c = call->conn;
    if (c->state == CONN_WS) {
        const char *id = call->has_id ? call->id : NULL;
        if (r == NULL || r->type != REDIS_REPLY_INTEGER) {
            session_send_error(c, id, PROTO_E_UNAVAILABLE, "signal not sent, retry");
        } else if (r->integer == 0) {
            session_send_error(c, id, PROTO_E_NOT_FOUND, "the receiver has no connection");
        } else {
            session_send_json(c, proto_encode_ok(id));
        }
    }
    room_call_free(call);
}

void calls_signal(conn_t *c, const proto_req_t *req)
{
    const char *id = req->has_id ? req->id : NULL;
    room_call_t *call = room_request_relay(c, req);
    if (call == NULL) {
        return;
    }
    char *frame = proto_encode_signal(session_of(c)->auth.user, req->room, req->call_id, req->kind, req->data);
    if (frame == NULL) {
        room_call_free(call);
        session_send_error(c, id, PROTO_E_INTERNAL, "out of memory");
        return;
    }
    int rc = inbox_send_counted(chat_of(c), req->to, frame, calls_on_sent, call);
    free(frame);
    if (rc != 0) {
        room_call_free(call);
        session_send_error(c, id, PROTO_E_UNAVAILABLE, "signal not sent, retry");
    }
}
