#include "session.h"
#include "inbox.h"
#include "unread.h"
#include "search.h"
#include "history.h"
#include "message.h"
#include "presence.h"
#include "room.h"
#include "../../common/log.h"
#include "../../proto/proto.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void session_send_json(conn_t *c, char *json)
{
    if (json != NULL) {
        conn_send_text(c, json, strlen(json));
        free(json);
    }
}

void session_send_error(conn_t *c, const char *id, int code, const char *message)
{
    metrics_count_error(chat_of(c)->metrics, code);
    session_send_json(c, proto_encode_error(id, (proto_err_t)code, message));
}

void session_id(const session_t *s, char *out, size_t len)
{
    const chat_t *ch = chat_of(&s->conn);
    snprintf(out, len, "%x-%x-%llx", (unsigned)ch->master_pid, (unsigned)ch->pid,
             (unsigned long long)s->serial);
}

void session_start(conn_t *c, auth_t *auth)
{
    chat_t *ch = chat_of(c);
    session_t *s = session_of(c);
    s->auth = *auth;
    memset(auth, 0, sizeof(*auth));
    s->serial = ++ch->next_serial;
    char id[48];
    session_id(s, id, sizeof(id));
    s->tokens = ch->cfg->burst;
    s->refill_ms = (uint32_t)uv_now(ch->loop);
    metrics_add(&ch->metrics->connections, 1);
    log_debug("event=session_start session=%s user=%s", id, s->auth.user);
    inbox_add(c);
    const config_t *cfg = ch->cfg;
    session_send_json(c, proto_encode_welcome(s->auth.user, id, cfg->heartbeat, cfg->max_message,
                                              cfg->max_content, cfg->rate, cfg->burst, cfg->max_file));
}

/*
 * The token bucket of the contract. Returns 1 when the request may go on;
 * 0 when it is dropped (an error was sent, or the flooder was closed).
 */
static int session_rate_ok(conn_t *c, const char *id)
{
    session_t *s = session_of(c);
    const config_t *cfg = chat_of(c)->cfg;
    uint32_t now = (uint32_t)uv_now(chat_of(c)->loop);
    s->tokens += (double)(now - s->refill_ms) * cfg->rate / 1000.0;
    if (s->tokens > cfg->burst) {
        s->tokens = cfg->burst;
    }
    s->refill_ms = now;
    if (now - s->flood_start_ms >= 1000) {
        s->flood_start_ms = now;
        s->flood_count = 0;
    }
    s->flood_count++;
    if (s->flood_count > 10u * (uint32_t)cfg->rate) {
        char sid[48];
        session_id(s, sid, sizeof(sid));
        log_info("event=flood_disconnect session=%s user=%s", sid, s->auth.user);
        session_send_error(c, id, PROTO_E_RATE_LIMITED, "sending far above the rate limit");
        conn_close(c, 1008, "rate limit exceeded");
        return 0;
    }
    if (s->tokens < 1.0) {
        session_send_error(c, id, PROTO_E_RATE_LIMITED, "rate limit exceeded");
        return 0;
    }
    s->tokens -= 1.0;
    return 1;
}

void session_on_text(conn_t *c, const char *text, size_t len)
{
    proto_req_t req;
    const char *why = NULL;
    proto_limits_t lim = { (size_t)chat_of(c)->cfg->max_content };
    proto_err_t err = proto_decode(text, len, &lim, &req, &why);
    const char *id = req.has_id ? req.id : NULL;
    if (err != PROTO_OK) {
        session_send_error(c, id, err, why);
        proto_req_free(&req);
        return;
    }
    switch (req.type) {
    case PROTO_PING:
        session_send_json(c, proto_encode_pong(id));
        break;
    case PROTO_JOIN:
        room_join(c, &req);
        break;
    case PROTO_LEAVE:
        room_leave(c, &req);
        break;
    case PROTO_CHAT:
        if (session_rate_ok(c, id)) {
            message_chat(c, &req);
        }
        break;
    case PROTO_TYPING:
        if (session_rate_ok(c, id)) {
            presence_typing(c, &req);
        }
        break;
    case PROTO_READ:
        unread_read(c, &req);
        break;
    case PROTO_ROOMS:
        /* One request, up to 500 reads in Redis: it spends a token. */
        if (session_rate_ok(c, id)) {
            unread_rooms(c, &req);
        }
        break;
    case PROTO_EDIT:
    case PROTO_DELETE:
    case PROTO_REACT:
        if (session_rate_ok(c, id)) {
            message_event(c, &req);
        }
        break;
    case PROTO_HISTORY:
        history_request(c, &req);
        break;
    case PROTO_SEARCH:
        search_request(c, &req);
        break;
    case PROTO_PRESENCE:
        presence_request(c, &req);
        break;
    }
    proto_req_free(&req);
}

void session_end(conn_t *c)
{
    session_t *s = session_of(c);
    if (s->serial == 0) {
        return;
    }
    room_leave_all(c);
    inbox_remove(c);
    metrics_slot_t *ms = chat_of(c)->metrics;
    if (metrics_get(&ms->connections) > 0) {
        metrics_add(&ms->connections, (uint64_t)-1);
    }
    char id[48];
    session_id(s, id, sizeof(id));
    log_debug("event=session_end session=%s user=%s", id, s->auth.user);
    auth_free(&s->auth);
    s->serial = 0;
}
