#include "history.h"
#include "room.h"
#include "../data/archive.h"
#include "../data/store.h"
#include "../../common/log.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void history_send_page(conn_t *c, const char *id, const char *type, const char *room, const char *q,
                       char *const *texts, size_t n, size_t limit, int newest_first)
{
    int more = n > limit;
    if (n > limit) {
        n = limit;
    }
    cJSON *root = cJSON_CreateObject();
    cJSON *p = NULL, *msgs = NULL;
    int ok = root != NULL && cJSON_AddStringToObject(root, "type", type) != NULL &&
             (id == NULL || cJSON_AddStringToObject(root, "id", id) != NULL) &&
             (p = cJSON_AddObjectToObject(root, "payload")) != NULL &&
             cJSON_AddStringToObject(p, "room", room) != NULL &&
             (q == NULL || cJSON_AddStringToObject(p, "q", q) != NULL) &&
             (msgs = cJSON_AddArrayToObject(p, "messages")) != NULL &&
             cJSON_AddBoolToObject(p, "more", more) != NULL;
    for (size_t k = 0; ok && k < n; k++) {
        /* Stored payloads are JSON the server wrote: spliced in raw. */
        cJSON *item = cJSON_CreateRaw(texts[newest_first ? k : n - 1 - k]);
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

/* History pages list messages ascending. */
static void history_answer(conn_t *c, const char *id, const char *room,
                           char *const *texts, size_t n, size_t limit)
{
    history_send_page(c, id, "history", room, NULL, texts, n, limit, 0);
}

static void history_on_archive(void *arg, char **found, int nfound)
{
    room_call_t *call = arg;
    conn_t *c = call->conn;
    const char *id = call->has_id ? call->id : NULL;
    if (c->state == CONN_WS) {
        if (nfound < 0 && call->ntexts == 0) {
            session_send_error(c, id, PROTO_E_UNAVAILABLE, "history unavailable, retry");
        } else if (nfound < 0) {
            /* What Redis had, and "more" so the client pages on (and
             * retries the archive) from there. */
            history_answer(c, id, call->room->name, call->texts, call->ntexts,
                                call->ntexts > 0 ? call->ntexts - 1 : 0);
        } else {
            size_t total = call->ntexts + (size_t)nfound;
            char **all = calloc(total + 1, sizeof(*all));
            if (all == NULL) {
                session_send_error(c, id, PROTO_E_INTERNAL, "out of memory");
            } else {
                memcpy(all, call->texts, call->ntexts * sizeof(*all));
                memcpy(all + call->ntexts, found, (size_t)nfound * sizeof(*all));
                history_answer(c, id, call->room->name, all, total, (size_t)call->upto);
                free(all);
            }
        }
    }
    room_call_free(call);
}

static void history_on_log(void *arg, redisReply *reply)
{
    room_call_t *call = arg;
    chat_t *ch = call->room->chat;
    conn_t *c = call->conn;
    const char *id = call->has_id ? call->id : NULL;
    const redisReply *entries;
    int64_t lowest;
    int ended;
    if (c->state != CONN_WS) {
        room_call_free(call);
        return;
    }
    if (store_history_reply(reply, &entries, &lowest, &ended) != 0) {
        session_send_error(c, id, PROTO_E_UNAVAILABLE, "history unavailable, retry");
        room_call_free(call);
        return;
    }
    call->texts = calloc(entries->elements + 1, sizeof(char *));
    if (call->texts == NULL) {
        session_send_error(c, id, PROTO_E_INTERNAL, "out of memory");
        room_call_free(call);
        return;
    }
    for (size_t i = 0; i < entries->elements; i++) {
        store_entry_t e;
        /* Messages with their edits, delete and reactions folded in. */
        if (store_entry(entries->element[i], &e) != 0 ||
            (call->texts[call->ntexts] = proto_fold_message(e.payload, e.len, e.state, e.slen)) == NULL) {
            continue;
        }
        call->ntexts++;
    }
    size_t want = (size_t)call->upto + 1;
    /* The recent log ran out before the page did: older messages live in
     * the archive, below the lowest seq the log still has. */
    if (ch->archive != NULL && call->ntexts < want && ended && lowest > 1 &&
        archive_find(ch->archive, call->room->name, lowest, (int)(want - call->ntexts),
                     history_on_archive, call) == 0) {
        return;
    }
    history_answer(c, id, call->room->name, call->texts, call->ntexts, (size_t)call->upto);
    room_call_free(call);
}

void history_request(conn_t *c, const proto_req_t *req)
{
    const char *id = req->has_id ? req->id : NULL;
    room_call_t *call = room_request_call(c, req);
    if (call == NULL) {
        return;
    }
    call->upto = req->limit;
    int64_t before = req->has_before ? req->before : -1;
    call->before = before;
    if (before == 0) {
        /* Nothing precedes seq 1: answer without asking the store. */
        history_answer(c, id, req->room, NULL, 0, (size_t)req->limit);
        room_call_free(call);
        return;
    }
    if (store_history(chat_of(c)->bus, req->room, before, req->limit + 1, history_on_log, call) != 0) {
        room_call_free(call);
        session_send_error(c, id, PROTO_E_UNAVAILABLE, "history unavailable, retry");
    }
}
