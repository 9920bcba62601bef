#include "keys.h"
#include "inbox.h"
#include "room.h"
#include "session.h"
#include "../../common/log.h"
#include "../data/store.h"

#include <stdlib.h>
#include <string.h>

/* A request that names no room: the conn and the request's id. */
typedef struct keys_call_s {
    conn_t *conn;               /* referenced */
    int has_id;
    char id[PROTO_ID_MAX + 1];
    /* getkeys */
    cJSON *users;               /* a copy of the request's, owned */
    char **values;              /* one per user, NULL when none */
    int pending;
    int failed;
} keys_call_t;

/* One GET of a getkeys: which user of which call. */
typedef struct keys_slot_s {
    keys_call_t *call;
    int index;
} keys_slot_t;

static keys_call_t *keys_call_new(conn_t *c, const proto_req_t *req)
{
    keys_call_t *k = calloc(1, sizeof(*k));
    if (k == NULL) {
        session_send_error(c, req->has_id ? req->id : NULL, PROTO_E_INTERNAL, "out of memory");
        return NULL;
    }
    k->conn = c;
    conn_ref(c);
    if (req->has_id) {
        k->has_id = 1;
        memcpy(k->id, req->id, sizeof(k->id));
    }
    return k;
}

static void keys_call_free(keys_call_t *k)
{
    int n = k->users != NULL ? cJSON_GetArraySize(k->users) : 0;
    for (int i = 0; k->values != NULL && i < n; i++) {
        free(k->values[i]);
    }
    free(k->values);
    cJSON_Delete(k->users);
    conn_unref(k->conn);
    free(k);
}

static const char *keys_call_id(const keys_call_t *k)
{
    return k->has_id ? k->id : NULL;
}

static void keys_on_set(void *arg, redisReply *r)
{
    keys_call_t *k = arg;
    if (k->conn->state == CONN_WS) {
        if (r == NULL || r->type == REDIS_REPLY_ERROR) {
            session_send_error(k->conn, keys_call_id(k), PROTO_E_UNAVAILABLE, "storage unavailable, retry");
        } else {
            session_send_json(k->conn, proto_encode_ok(keys_call_id(k)));
        }
    }
    keys_call_free(k);
}

void keys_set(conn_t *c, const proto_req_t *req)
{
    keys_call_t *k = keys_call_new(c, req);
    if (k == NULL) {
        return;
    }
    if (store_set_user_key(chat_of(c)->bus, session_of(c)->auth.user, req->key, keys_on_set, k) != 0) {
        session_send_error(c, keys_call_id(k), PROTO_E_UNAVAILABLE, "storage unavailable, retry");
        keys_call_free(k);
    }
}

/* One reply of a getkeys is in (or one GET could not be sent): the
 * answer goes with the last. */
static void keys_get_settle(keys_slot_t *slots, keys_call_t *k)
{
    if (--k->pending > 0) {
        return;
    }
    free(slots);
    if (k->conn->state == CONN_WS) {
        if (k->failed) {
            session_send_error(k->conn, keys_call_id(k), PROTO_E_UNAVAILABLE, "storage unavailable, retry");
        } else {
            session_send_json(k->conn, proto_encode_keys(keys_call_id(k), k->users,
                                                         (const char *const *)k->values));
        }
    }
    keys_call_free(k);
}

static void keys_on_get(void *arg, redisReply *r)
{
    keys_slot_t *slot = arg;
    keys_call_t *k = slot->call;
    if (r == NULL || r->type == REDIS_REPLY_ERROR) {
        k->failed = 1;
    } else if (r->type == REDIS_REPLY_STRING) {
        k->values[slot->index] = strndup(r->str, r->len);
        k->failed |= k->values[slot->index] == NULL;
    }
    keys_get_settle(slot - slot->index, k);
}

void keys_get(conn_t *c, const proto_req_t *req)
{
    keys_call_t *k = keys_call_new(c, req);
    if (k == NULL) {
        return;
    }
    int n = cJSON_GetArraySize(req->users);
    keys_slot_t *slots = calloc((size_t)n, sizeof(*slots));
    k->users = cJSON_Duplicate(req->users, 1);
    k->values = calloc((size_t)n, sizeof(*k->values));
    if (slots == NULL || k->users == NULL || k->values == NULL) {
        free(slots);
        session_send_error(c, keys_call_id(k), PROTO_E_INTERNAL, "out of memory");
        keys_call_free(k);
        return;
    }
    /* One GET per user, each routed to the user's slot (a Redis Cluster
     * spreads them). One count more than the GETs keeps the call alive
     * through this loop whatever happens in it. */
    k->pending = n + 1;
    const cJSON *u;
    int i = 0;
    cJSON_ArrayForEach(u, k->users) {
        slots[i].call = k;
        slots[i].index = i;
        if (store_get_user_key(chat_of(c)->bus, u->valuestring, keys_on_get, &slots[i]) != 0) {
            k->failed = 1;
            k->pending--;
        }
        i++;
    }
    keys_get_settle(slots, k);
}

static void keys_on_room_key(void *arg, redisReply *r)
{
    room_call_t *call = arg;
    conn_t *c = call->conn;
    if (c->state == CONN_WS) {
        const char *id = call->has_id ? call->id : NULL;
        if (r == NULL || r->type == REDIS_REPLY_ERROR) {
            session_send_error(c, id, PROTO_E_UNAVAILABLE, "storage unavailable, retry");
        } else {
            /* Stored first, then delivered: a receiver that is offline
             * finds it with getroomkeys. */
            char *frame = proto_encode_roomkey(call->room->name, session_of(c)->auth.user, call->key_id,
                                               call->wrapped);
            if (frame != NULL) {
                inbox_send(chat_of(c), call->to, NULL, NULL, frame);
                free(frame);
            }
            session_send_json(c, proto_encode_ok(id));
        }
    }
    room_call_free(call);
}

void keys_room_key(conn_t *c, const proto_req_t *req)
{
    const char *id = req->has_id ? req->id : NULL;
    room_call_t *call = room_request_relay(c, req);
    if (call == NULL) {
        return;
    }
    cJSON *entry = cJSON_CreateObject();
    char *text = NULL;
    if (entry != NULL && cJSON_AddStringToObject(entry, "from", session_of(c)->auth.user) != NULL &&
        cJSON_AddStringToObject(entry, "keyId", req->key_id) != NULL &&
        cJSON_AddStringToObject(entry, "wrapped", req->wrapped) != NULL) {
        text = cJSON_PrintUnformatted(entry);
    }
    cJSON_Delete(entry);
    call->to = strdup(req->to);
    call->key_id = strdup(req->key_id);
    call->wrapped = strdup(req->wrapped);
    if (text == NULL || call->to == NULL || call->key_id == NULL || call->wrapped == NULL) {
        free(text);
        room_call_free(call);
        session_send_error(c, id, PROTO_E_INTERNAL, "out of memory");
        return;
    }
    int rc = store_put_room_key(chat_of(c)->bus, req->room, req->to, text, keys_on_room_key, call);
    free(text);
    if (rc != 0) {
        room_call_free(call);
        session_send_error(c, id, PROTO_E_UNAVAILABLE, "storage unavailable, retry");
    }
}

static void keys_on_room_keys(void *arg, redisReply *r)
{
    room_call_t *call = arg;
    conn_t *c = call->conn;
    if (c->state == CONN_WS) {
        const char *id = call->has_id ? call->id : NULL;
        if (r == NULL || r->type != REDIS_REPLY_ARRAY) {
            session_send_error(c, id, PROTO_E_UNAVAILABLE, "storage unavailable, retry");
        } else {
            const char **entries = calloc(r->elements + 1, sizeof(*entries));
            size_t n = 0;
            for (size_t i = 0; entries != NULL && i < r->elements; i++) {
                if (r->element[i]->type == REDIS_REPLY_STRING) {
                    entries[n++] = r->element[i]->str;
                }
            }
            if (entries == NULL) {
                session_send_error(c, id, PROTO_E_INTERNAL, "out of memory");
            } else {
                session_send_json(c, proto_encode_roomkeys(id, call->room->name, entries, n));
            }
            free(entries);
        }
    }
    room_call_free(call);
}

void keys_room_keys(conn_t *c, const proto_req_t *req)
{
    const char *id = req->has_id ? req->id : NULL;
    room_call_t *call = room_request_call(c, req);
    if (call == NULL) {
        return;
    }
    if (store_room_keys(chat_of(c)->bus, req->room, session_of(c)->auth.user, keys_on_room_keys, call) != 0) {
        room_call_free(call);
        session_send_error(c, id, PROTO_E_UNAVAILABLE, "storage unavailable, retry");
    }
}
