#include "proto.h"
#include <ctype.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static const char *const proto_err_names[PROTO_E_COUNT] = {
    "ok", "bad_request", "unauthorized", "forbidden", "not_joined",
    "too_large", "rate_limited", "unavailable", "internal", "not_found"
};

const char *proto_err_name(proto_err_t code)
{
    return code < PROTO_E_COUNT ? proto_err_names[code] : "internal";
}

static const struct {
    const char *name;
    proto_type_t type;
} proto_types[] = {
    { "join", PROTO_JOIN }, { "leave", PROTO_LEAVE }, { "chat", PROTO_CHAT },
    { "typing", PROTO_TYPING }, { "history", PROTO_HISTORY },
    { "presence", PROTO_PRESENCE }, { "ping", PROTO_PING },
    { "edit", PROTO_EDIT }, { "delete", PROTO_DELETE }, { "react", PROTO_REACT },
    { "read", PROTO_READ }, { "rooms", PROTO_ROOMS }, { "search", PROTO_SEARCH },
};

int proto_utf8_valid(const uint8_t *s, size_t len)
{
    size_t i = 0;
    while (i < len) {
        uint8_t c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t need;
        uint32_t cp;
        if (c >= 0xC2 && c <= 0xDF) {
            need = 1;
            cp = c & 0x1F;
        } else if (c >= 0xE0 && c <= 0xEF) {
            need = 2;
            cp = c & 0x0F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            need = 3;
            cp = c & 0x07;
        } else {
            return 0;
        }
        if (len - i <= need) {
            return 0;
        }
        for (size_t k = 1; k <= need; k++) {
            uint8_t cc = s[i + k];
            if ((cc & 0xC0) != 0x80) {
                return 0;
            }
            cp = (cp << 6) | (cc & 0x3F);
        }
        if ((need == 2 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) ||
            (need == 3 && (cp < 0x10000 || cp > 0x10FFFF))) {
            return 0;
        }
        i += need + 1;
    }
    return 1;
}

static int proto_name_valid(const char *s, size_t len, size_t max, int colon_ok)
{
    if (len == 0 || len > max) {
        return 0;
    }
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        int ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                 c == '_' || c == '.' || c == '-' || (colon_ok && c == ':');
        if (!ok) {
            return 0;
        }
    }
    return 1;
}

int proto_room_valid(const char *room)
{
    size_t n = strnlen(room, PROTO_ROOM_MAX + 1);
    if (n > PROTO_ROOM_PLAIN_MAX && strncmp(room, "dm:", 3) == 0) {
        char a[PROTO_USER_MAX + 1], b[PROTO_USER_MAX + 1];
        return proto_dm_users(room, a, b) == 1;
    }
    return proto_name_valid(room, n, PROTO_ROOM_PLAIN_MAX, 1);
}

int proto_dm_users(const char *room, char *a, char *b)
{
    if (strncmp(room, "dm:", 3) != 0) {
        return 0;
    }
    const char *first = room + 3;
    const char *colon = strchr(first, ':');
    if (colon == NULL) {
        return -1;
    }
    size_t na = (size_t)(colon - first);
    const char *second = colon + 1;
    size_t nb = strnlen(second, PROTO_USER_MAX + 1);
    if (!proto_user_valid(first, na) || !proto_user_valid(second, nb)) {
        return -1;
    }
    memcpy(a, first, na);
    a[na] = '\0';
    memcpy(b, second, nb + 1);
    /* Bytewise, as the contract says: strcmp compares unsigned chars. */
    return strcmp(a, b) < 0 ? 1 : -1;
}

int proto_user_valid(const char *user, size_t len)
{
    return proto_name_valid(user, len, PROTO_USER_MAX, 0);
}

/* A JSON number that is an integer in [min, max]. */
static int proto_get_int(const cJSON *item, int64_t min, int64_t max, int64_t *out)
{
    if (!cJSON_IsNumber(item)) {
        return 0;
    }
    double d = item->valuedouble;
    if (!isfinite(d) || d != floor(d) || d < (double)min || d > (double)max) {
        return 0;
    }
    *out = (int64_t)d;
    return 1;
}

static int proto_url_valid(const char *url)
{
    size_t n = strlen(url);
    if (n > PROTO_URL_MAX) {
        return 0;
    }
    size_t scheme;
    if (strncasecmp(url, "https://", 8) == 0) {
        scheme = 8;
    } else if (strncasecmp(url, "http://", 7) == 0) {
        scheme = 7;
    } else {
        return 0;
    }
    if (n == scheme || url[scheme] == '/') {
        return 0;
    }
    /* Control characters and spaces have no place in a URL a client renders. */
    for (size_t i = 0; i < n; i++) {
        if ((unsigned char)url[i] <= 0x20 || url[i] == 0x7f) {
            return 0;
        }
    }
    return 1;
}

/* "/files/<id>": what POST /files answers, the url of a "file" attachment. */
static int proto_file_url_valid(const char *url)
{
    if (strncmp(url, "/files/", 7) != 0) {
        return 0;
    }
    size_t n = strlen(url + 7);
    if (n == 0 || n > 64) {
        return 0;
    }
    for (const char *p = url + 7; *p != '\0'; p++) {
        if (!isalnum((unsigned char)*p) && *p != '-' && *p != '_') {
            return 0;
        }
    }
    return 1;
}

/* The optional name, size and mime of a "file" attachment. */
static int proto_file_fields_valid(const cJSON *a)
{
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(a, "name");
    const cJSON *size = cJSON_GetObjectItemCaseSensitive(a, "size");
    const cJSON *mime = cJSON_GetObjectItemCaseSensitive(a, "mime");
    if (name != NULL && (!cJSON_IsString(name) || strlen(name->valuestring) > PROTO_FILE_NAME_MAX)) {
        return 0;
    }
    if (mime != NULL && (!cJSON_IsString(mime) || strlen(mime->valuestring) > PROTO_FILE_NAME_MAX)) {
        return 0;
    }
    int64_t v;
    return size == NULL || proto_get_int(size, 0, (int64_t)1 << 53, &v);
}

static proto_err_t proto_decode_chat(const cJSON *payload, const proto_limits_t *lim,
                                     proto_req_t *req, const char **why)
{
    const cJSON *content = cJSON_GetObjectItemCaseSensitive(payload, "content");
    if (!cJSON_IsString(content)) {
        *why = req->type == PROTO_EDIT ? "edit needs a string 'content'" : "chat needs a string 'content'";
        return PROTO_E_BAD_REQUEST;
    }
    size_t clen = strlen(content->valuestring);
    if (clen == 0) {
        *why = "'content' is empty";
        return PROTO_E_BAD_REQUEST;
    }
    if (clen > lim->max_content) {
        *why = "'content' is larger than maxContent";
        return PROTO_E_TOO_LARGE;
    }
    req->content = content->valuestring;
    req->content_len = clen;

    const cJSON *att = cJSON_GetObjectItemCaseSensitive(payload, "attachments");
    if (att == NULL || cJSON_IsNull(att)) {
        return PROTO_OK;
    }
    if (!cJSON_IsArray(att)) {
        *why = "'attachments' must be an array";
        return PROTO_E_BAD_REQUEST;
    }
    if (cJSON_GetArraySize(att) > PROTO_ATTACH_MAX) {
        *why = "more than 10 attachments";
        return PROTO_E_TOO_LARGE;
    }
    const cJSON *a;
    cJSON_ArrayForEach(a, att) {
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(a, "type");
        const cJSON *u = cJSON_GetObjectItemCaseSensitive(a, "url");
        if (!cJSON_IsObject(a) || !cJSON_IsString(t) || !cJSON_IsString(u) ||
            t->valuestring[0] == '\0' || strlen(t->valuestring) > 128) {
            *why = "an attachment must be {\"type\": string, \"url\": string}";
            return PROTO_E_BAD_REQUEST;
        }
        if (strcmp(t->valuestring, "file") == 0) {
            if (!proto_file_url_valid(u->valuestring)) {
                *why = "a file attachment's url must be /files/<id>, as POST /files answered";
                return PROTO_E_BAD_REQUEST;
            }
            if (!proto_file_fields_valid(a)) {
                *why = "a file attachment's name and mime must be strings of at most 255 bytes, its size an integer";
                return PROTO_E_BAD_REQUEST;
            }
        } else if (!proto_url_valid(u->valuestring)) {
            *why = "an attachment url must be an http(s) URL of at most 2048 bytes";
            return PROTO_E_BAD_REQUEST;
        }
    }
    req->attachments = att;
    return PROTO_OK;
}

/* The target of edit, delete and react: a seq, so an integer >= 1. */
static proto_err_t proto_decode_target(const cJSON *payload, proto_req_t *req, const char **why)
{
    if (!proto_get_int(cJSON_GetObjectItemCaseSensitive(payload, "target"), 1, INT64_C(1) << 53,
                       &req->target)) {
        *why = "'target' must be the seq of a message (an integer >= 1)";
        return PROTO_E_BAD_REQUEST;
    }
    return PROTO_OK;
}

static proto_err_t proto_decode_react(const cJSON *payload, proto_req_t *req, const char **why)
{
    proto_err_t err = proto_decode_target(payload, req, why);
    if (err != PROTO_OK) {
        return err;
    }
    const cJSON *emoji = cJSON_GetObjectItemCaseSensitive(payload, "emoji");
    if (!cJSON_IsString(emoji) || emoji->valuestring[0] == '\0') {
        *why = "'emoji' must be a string of 1 to 32 bytes";
        return PROTO_E_BAD_REQUEST;
    }
    size_t n = strlen(emoji->valuestring);
    if (n > PROTO_EMOJI_MAX) {
        *why = "'emoji' is longer than 32 bytes";
        return PROTO_E_TOO_LARGE;
    }
    /* The store keys a reaction by emoji and user joined with a newline:
     * control characters have no business in an emoji anyway. */
    for (size_t i = 0; i < n; i++) {
        if ((unsigned char)emoji->valuestring[i] < 0x20 || emoji->valuestring[i] == 0x7f) {
            *why = "'emoji' may not contain control characters";
            return PROTO_E_BAD_REQUEST;
        }
    }
    const cJSON *on = cJSON_GetObjectItemCaseSensitive(payload, "on");
    if (!cJSON_IsBool(on)) {
        *why = "'on' must be a boolean";
        return PROTO_E_BAD_REQUEST;
    }
    req->emoji = emoji->valuestring;
    req->on = cJSON_IsTrue(on);
    return PROTO_OK;
}

/* before and limit of a page (history, search). */
static proto_err_t proto_decode_page(const cJSON *payload, proto_req_t *req, int dflt, int max,
                                     const char **why)
{
    const cJSON *before = cJSON_GetObjectItemCaseSensitive(payload, "before");
    const cJSON *limit = cJSON_GetObjectItemCaseSensitive(payload, "limit");
    int64_t v;
    if (before != NULL && !cJSON_IsNull(before)) {
        if (!proto_get_int(before, 0, INT64_C(1) << 53, &req->before)) {
            *why = "'before' must be an integer >= 0";
            return PROTO_E_BAD_REQUEST;
        }
        req->has_before = 1;
    }
    req->limit = dflt;
    if (limit != NULL && !cJSON_IsNull(limit)) {
        if (!proto_get_int(limit, 1, max, &v)) {
            *why = max == PROTO_SEARCH_MAX ? "'limit' must be an integer from 1 to 50"
                                           : "'limit' must be an integer from 1 to 100";
            return PROTO_E_BAD_REQUEST;
        }
        req->limit = (int)v;
    }
    return PROTO_OK;
}

static proto_err_t proto_decode_payload(const cJSON *payload, const proto_limits_t *lim,
                                        proto_req_t *req, const char **why)
{
    if (req->type == PROTO_PING || req->type == PROTO_ROOMS) {
        return PROTO_OK;
    }
    const cJSON *room = cJSON_GetObjectItemCaseSensitive(payload, "room");
    if (!cJSON_IsString(room) || !proto_room_valid(room->valuestring)) {
        *why = "'room' must match [A-Za-z0-9_.:-]{1,128} (or be dm:A:B)";
        return PROTO_E_BAD_REQUEST;
    }
    req->room = room->valuestring;

    switch (req->type) {
    case PROTO_JOIN: {
        const cJSON *since = cJSON_GetObjectItemCaseSensitive(payload, "since");
        if (since != NULL && !cJSON_IsNull(since)) {
            if (!proto_get_int(since, 0, INT64_C(1) << 53, &req->since)) {
                *why = "'since' must be an integer >= 0";
                return PROTO_E_BAD_REQUEST;
            }
            req->has_since = 1;
        }
        return PROTO_OK;
    }
    case PROTO_CHAT:
        return proto_decode_chat(payload, lim, req, why);
    case PROTO_EDIT: {
        proto_err_t err = proto_decode_target(payload, req, why);
        return err != PROTO_OK ? err : proto_decode_chat(payload, lim, req, why);
    }
    case PROTO_DELETE:
        return proto_decode_target(payload, req, why);
    case PROTO_READ:
        if (!proto_get_int(cJSON_GetObjectItemCaseSensitive(payload, "seq"), 0, INT64_C(1) << 53, &req->seq)) {
            *why = "'seq' must be an integer >= 0";
            return PROTO_E_BAD_REQUEST;
        }
        return PROTO_OK;
    case PROTO_REACT:
        return proto_decode_react(payload, req, why);
    case PROTO_TYPING: {
        const cJSON *active = cJSON_GetObjectItemCaseSensitive(payload, "active");
        if (!cJSON_IsBool(active)) {
            *why = "'active' must be a boolean";
            return PROTO_E_BAD_REQUEST;
        }
        req->active = cJSON_IsTrue(active);
        return PROTO_OK;
    }
    case PROTO_SEARCH: {
        const cJSON *q = cJSON_GetObjectItemCaseSensitive(payload, "q");
        if (!cJSON_IsString(q) || q->valuestring[0] == '\0') {
            *why = "search needs a string 'q'";
            return PROTO_E_BAD_REQUEST;
        }
        if (strlen(q->valuestring) > PROTO_QUERY_BYTES) {
            *why = "'q' is longer than 256 bytes";
            return PROTO_E_TOO_LARGE;
        }
        req->q = q->valuestring;
        return proto_decode_page(payload, req, PROTO_SEARCH_DEFAULT, PROTO_SEARCH_MAX, why);
    }
    case PROTO_HISTORY:
        return proto_decode_page(payload, req, PROTO_HISTORY_DEFAULT, PROTO_HISTORY_MAX, why);
    default:
        return PROTO_OK;
    }
}

/* Characters (code points) in a valid UTF-8 string. */
static size_t proto_utf8_chars(const char *s)
{
    size_t n = 0;
    for (; *s != '\0'; s++) {
        n += ((unsigned char)*s & 0xC0) != 0x80;
    }
    return n;
}

/*
 * 1 when a JSON string in text escapes NUL (\u0000). cJSON would cut the
 * string there, so a name or content would silently change meaning.
 */
static int proto_has_escaped_nul(const char *text, size_t len)
{
    for (size_t i = 0; i + 1 < len; i++) {
        if (text[i] != '\\') {
            continue;
        }
        if (text[i + 1] == 'u' && i + 5 < len && memcmp(text + i + 2, "0000", 4) == 0) {
            return 1;
        }
        i++;    /* skip the escaped character, e.g. the second of "\\" */
    }
    return 0;
}

proto_err_t proto_decode(const char *text, size_t len, const proto_limits_t *lim,
                         proto_req_t *req, const char **why)
{
    memset(req, 0, sizeof(*req));
    /* A raw NUL is valid UTF-8 but never valid JSON text outside a
     * string's escapes; cJSON would cut the string there. */
    if (len == 0) {
        /* wslay hands an empty message over as NULL. */
        *why = "not valid JSON";
        return PROTO_E_BAD_REQUEST;
    }
    if (memchr(text, '\0', len) != NULL || proto_has_escaped_nul(text, len)) {
        *why = "strings may not contain NUL (\\u0000)";
        return PROTO_E_BAD_REQUEST;
    }
    const char *end = NULL;
    req->root = cJSON_ParseWithLengthOpts(text, len, &end, 0);
    if (req->root == NULL) {
        *why = "not valid JSON";
        return PROTO_E_BAD_REQUEST;
    }
    /* Anything but white space after the object is a second value. */
    for (; end != NULL && end < text + len; end++) {
        if (*end != ' ' && *end != '\t' && *end != '\r' && *end != '\n') {
            *why = "one JSON object per message";
            return PROTO_E_BAD_REQUEST;
        }
    }
    if (!cJSON_IsObject(req->root)) {
        *why = "a message must be a JSON object";
        return PROTO_E_BAD_REQUEST;
    }

    const cJSON *id = cJSON_GetObjectItemCaseSensitive(req->root, "id");
    if (id != NULL) {
        size_t n = cJSON_IsString(id) ? strlen(id->valuestring) : 0;
        if (n == 0 || n > PROTO_ID_MAX || proto_utf8_chars(id->valuestring) > PROTO_ID_CHARS) {
            *why = "'id' must be a string of 1 to 64 characters";
            return PROTO_E_BAD_REQUEST;
        }
        memcpy(req->id, id->valuestring, n + 1);
        req->has_id = 1;
    }

    const cJSON *type = cJSON_GetObjectItemCaseSensitive(req->root, "type");
    if (!cJSON_IsString(type)) {
        *why = "'type' must be a string";
        return PROTO_E_BAD_REQUEST;
    }
    for (size_t i = 0; i < sizeof(proto_types) / sizeof(proto_types[0]); i++) {
        if (strcmp(type->valuestring, proto_types[i].name) == 0) {
            req->type = proto_types[i].type;
            break;
        }
    }
    if (req->type == 0) {
        *why = "unknown 'type'";
        return PROTO_E_BAD_REQUEST;
    }

    const cJSON *payload = cJSON_GetObjectItemCaseSensitive(req->root, "payload");
    if (payload != NULL && !cJSON_IsObject(payload)) {
        *why = "'payload' must be an object";
        return PROTO_E_BAD_REQUEST;
    }
    return proto_decode_payload(payload, lim, req, why);
}

void proto_req_free(proto_req_t *req)
{
    cJSON_Delete(req->root);
    req->root = NULL;
}

/* Helpers for the encoders: build {"type":T,"id":I,"payload":{}} and print. */
static cJSON *proto_frame(const char *type, const char *id, cJSON **payload)
{
    cJSON *root = cJSON_CreateObject();
    if (root == NULL) {
        return NULL;
    }
    if (cJSON_AddStringToObject(root, "type", type) == NULL ||
        (id != NULL && cJSON_AddStringToObject(root, "id", id) == NULL) ||
        (*payload = cJSON_AddObjectToObject(root, "payload")) == NULL) {
        cJSON_Delete(root);
        return NULL;
    }
    return root;
}

/* Prints and frees root; NULL if root is NULL or printing fails. */
static char *proto_print(cJSON *root, int ok)
{
    char *out = NULL;
    if (root != NULL && ok) {
        out = cJSON_PrintUnformatted(root);
    }
    cJSON_Delete(root);
    return out;
}

char *proto_encode_error(const char *id, proto_err_t code, const char *message)
{
    cJSON *p = NULL;
    cJSON *root = proto_frame("error", id, &p);
    int ok = root != NULL &&
             cJSON_AddStringToObject(p, "code", proto_err_name(code)) != NULL &&
             cJSON_AddStringToObject(p, "message", message) != NULL;
    return proto_print(root, ok);
}

char *proto_encode_pong(const char *id)
{
    cJSON *p = NULL;
    cJSON *root = proto_frame("pong", id, &p);
    return proto_print(root, 1);
}

char *proto_encode_welcome(const char *user, const char *session, int heartbeat,
                           int max_message, int max_content, int rate, int burst, int max_file)
{
    cJSON *p = NULL, *l = NULL;
    cJSON *root = proto_frame("welcome", NULL, &p);
    int ok = root != NULL &&
             cJSON_AddStringToObject(p, "user", user) != NULL &&
             cJSON_AddStringToObject(p, "session", session) != NULL &&
             cJSON_AddNumberToObject(p, "heartbeat", heartbeat) != NULL &&
             (l = cJSON_AddObjectToObject(p, "limits")) != NULL &&
             cJSON_AddNumberToObject(l, "maxMessage", max_message) != NULL &&
             cJSON_AddNumberToObject(l, "maxContent", max_content) != NULL &&
             cJSON_AddNumberToObject(l, "rate", rate) != NULL &&
             cJSON_AddNumberToObject(l, "burst", burst) != NULL &&
             cJSON_AddNumberToObject(l, "maxFile", max_file) != NULL;
    return proto_print(root, ok);
}

char *proto_encode_joined(const char *id, const char *room, int64_t seq, int recovered,
                          int64_t read_seq, int unread)
{
    cJSON *p = NULL;
    cJSON *root = proto_frame("joined", id, &p);
    int ok = root != NULL &&
             cJSON_AddStringToObject(p, "room", room) != NULL &&
             cJSON_AddNumberToObject(p, "seq", (double)seq) != NULL &&
             cJSON_AddBoolToObject(p, "recovered", recovered) != NULL &&
             cJSON_AddNumberToObject(p, "readSeq", (double)read_seq) != NULL &&
             cJSON_AddNumberToObject(p, "unread", unread) != NULL;
    return proto_print(root, ok);
}

char *proto_encode_ok(const char *id)
{
    cJSON *p = NULL;
    return proto_print(proto_frame("ok", id, &p), 1);
}

char *proto_encode_receipt(const char *room, const char *user, int64_t seq)
{
    cJSON *p = NULL;
    cJSON *root = proto_frame("receipt", NULL, &p);
    int ok = root != NULL &&
             cJSON_AddStringToObject(p, "room", room) != NULL &&
             cJSON_AddStringToObject(p, "user", user) != NULL &&
             cJSON_AddNumberToObject(p, "seq", (double)seq) != NULL;
    return proto_print(root, ok);
}

char *proto_encode_notify(const char *room, const char *from, int64_t seq)
{
    cJSON *p = NULL;
    cJSON *root = proto_frame("notify", NULL, &p);
    int ok = root != NULL &&
             cJSON_AddStringToObject(p, "room", room) != NULL &&
             cJSON_AddStringToObject(p, "from", from) != NULL &&
             cJSON_AddNumberToObject(p, "seq", (double)seq) != NULL;
    return proto_print(root, ok);
}

char *proto_encode_rooms(const char *id, const proto_room_state_t *rooms, size_t n)
{
    cJSON *p = NULL, *arr = NULL;
    cJSON *root = proto_frame("rooms", id, &p);
    int ok = root != NULL && (arr = cJSON_AddArrayToObject(p, "rooms")) != NULL;
    for (size_t i = 0; ok && i < n; i++) {
        cJSON *r = cJSON_CreateObject();
        ok = r != NULL && cJSON_AddItemToArray(arr, r) &&
             cJSON_AddStringToObject(r, "room", rooms[i].room) != NULL &&
             cJSON_AddNumberToObject(r, "seq", (double)rooms[i].seq) != NULL &&
             cJSON_AddNumberToObject(r, "readSeq", (double)rooms[i].read_seq) != NULL &&
             cJSON_AddNumberToObject(r, "unread", rooms[i].unread) != NULL;
    }
    return proto_print(root, ok);
}

char *proto_encode_left(const char *id, const char *room)
{
    cJSON *p = NULL;
    cJSON *root = proto_frame("left", id, &p);
    int ok = root != NULL && cJSON_AddStringToObject(p, "room", room) != NULL;
    return proto_print(root, ok);
}

char *proto_encode_ack(const char *id, const char *room, int64_t seq, int64_t ts, int duplicate)
{
    cJSON *p = NULL;
    cJSON *root = proto_frame("ack", id, &p);
    int ok = root != NULL &&
             cJSON_AddStringToObject(p, "room", room) != NULL &&
             cJSON_AddNumberToObject(p, "seq", (double)seq) != NULL &&
             cJSON_AddNumberToObject(p, "ts", (double)ts) != NULL &&
             cJSON_AddBoolToObject(p, "duplicate", duplicate) != NULL;
    return proto_print(root, ok);
}

char *proto_encode_typing(const char *room, const char *user, int active)
{
    cJSON *p = NULL;
    cJSON *root = proto_frame("typing", NULL, &p);
    int ok = root != NULL &&
             cJSON_AddStringToObject(p, "room", room) != NULL &&
             cJSON_AddStringToObject(p, "user", user) != NULL &&
             cJSON_AddBoolToObject(p, "active", active) != NULL;
    return proto_print(root, ok);
}

char *proto_encode_member(const char *room, const char *user, int joined)
{
    cJSON *p = NULL;
    cJSON *root = proto_frame("member", NULL, &p);
    int ok = root != NULL &&
             cJSON_AddStringToObject(p, "room", room) != NULL &&
             cJSON_AddStringToObject(p, "user", user) != NULL &&
             cJSON_AddStringToObject(p, "event", joined ? "join" : "leave") != NULL;
    return proto_print(root, ok);
}

char *proto_encode_presence(const char *id, const char *room, const char *const *users, size_t n)
{
    cJSON *p = NULL, *arr = NULL;
    cJSON *root = proto_frame("presence", id, &p);
    int ok = root != NULL &&
             cJSON_AddStringToObject(p, "room", room) != NULL &&
             (arr = cJSON_AddArrayToObject(p, "users")) != NULL;
    for (size_t i = 0; ok && i < n; i++) {
        cJSON *s = cJSON_CreateString(users[i]);
        ok = s != NULL && cJSON_AddItemToArray(arr, s);
    }
    return proto_print(root, ok);
}

/* Adds content and a copy of the validated attachments to o. */
static int proto_add_content(cJSON *o, const char *content, const cJSON *attachments)
{
    cJSON *arr = NULL;
    if (cJSON_AddStringToObject(o, "content", content) == NULL ||
        (arr = cJSON_AddArrayToObject(o, "attachments")) == NULL) {
        return 0;
    }
    const cJSON *a;
    if (attachments != NULL) {
        cJSON_ArrayForEach(a, attachments) {
            /* Only the known fields travel; unknown ones are ignored. */
            const char *type = cJSON_GetObjectItemCaseSensitive(a, "type")->valuestring;
            cJSON *copy = cJSON_CreateObject();
            if (copy == NULL || !cJSON_AddItemToArray(arr, copy) ||
                cJSON_AddStringToObject(copy, "type", type) == NULL ||
                cJSON_AddStringToObject(copy, "url",
                    cJSON_GetObjectItemCaseSensitive(a, "url")->valuestring) == NULL) {
                return 0;
            }
            if (strcmp(type, "file") == 0) {
                static const char *const extra[] = { "name", "size", "mime" };
                for (size_t i = 0; i < sizeof(extra) / sizeof(extra[0]); i++) {
                    const cJSON *f = cJSON_GetObjectItemCaseSensitive(a, extra[i]);
                    cJSON *dup = f != NULL ? cJSON_Duplicate(f, 0) : NULL;
                    if (f != NULL && (dup == NULL || !cJSON_AddItemToObject(copy, extra[i], dup))) {
                        cJSON_Delete(dup);
                        return 0;
                    }
                }
            }
        }
    }
    return 1;
}

/* Prints o without its opening brace: the store writes room, seq and ts
 * in front when it assigns them. */
static char *proto_print_tail(cJSON *o, int ok)
{
    char *json = proto_print(o, ok);
    if (json != NULL) {
        memmove(json, json + 1, strlen(json));
    }
    return json;
}

char *proto_encode_chat_tail(const char *sender, const char *content,
                             const cJSON *attachments, const char *cid)
{
    cJSON *o = cJSON_CreateObject();
    int ok = o != NULL &&
             cJSON_AddStringToObject(o, "sender", sender) != NULL &&
             proto_add_content(o, content, attachments) &&
             (cid == NULL || cJSON_AddStringToObject(o, "cid", cid) != NULL);
    return proto_print_tail(o, ok);
}

const char *proto_event_name(proto_event_t kind)
{
    switch (kind) {
    case PROTO_EV_EDIT:
        return "edit";
    case PROTO_EV_DELETE:
        return "delete";
    default:
        return "reaction";
    }
}

char *proto_encode_event_tail(proto_event_t kind, const char *sender, const proto_req_t *req,
                              const char *cid)
{
    cJSON *o = cJSON_CreateObject();
    int ok = o != NULL &&
             cJSON_AddStringToObject(o, "sender", sender) != NULL &&
             cJSON_AddNumberToObject(o, "target", (double)req->target) != NULL;
    if (ok && kind == PROTO_EV_EDIT && req->attachments == NULL) {
        /* An edit without attachments keeps the message's: the store puts
         * them where the marker stands (a byte cJSON never prints raw). */
        ok = cJSON_AddStringToObject(o, "content", req->content) != NULL &&
             cJSON_AddRawToObject(o, "attachments", PROTO_KEEP_ATTACHMENTS) != NULL;
    } else if (ok && kind == PROTO_EV_EDIT) {
        ok = proto_add_content(o, req->content, req->attachments);
    } else if (ok && kind == PROTO_EV_REACTION) {
        ok = cJSON_AddStringToObject(o, "emoji", req->emoji) != NULL &&
             cJSON_AddBoolToObject(o, "on", req->on) != NULL;
    }
    ok = ok && (cid == NULL || cJSON_AddStringToObject(o, "cid", cid) != NULL);
    return proto_print_tail(o, ok);
}

/* Replaces (or adds) o's member name with item, which o then owns. */
static int proto_set(cJSON *o, const char *name, cJSON *item)
{
    if (item == NULL) {
        return 0;
    }
    if (cJSON_GetObjectItemCaseSensitive(o, name) != NULL) {
        return cJSON_ReplaceItemInObjectCaseSensitive(o, name, item);
    }
    return cJSON_AddItemToObject(o, name, item);
}

/* The reactions of a state record as the contract shows them. */
static cJSON *proto_fold_reactions(const cJSON *r)
{
    cJSON *out = cJSON_CreateArray();
    const cJSON *e;
    if (out == NULL || !cJSON_IsArray(r)) {
        return out;
    }
    cJSON_ArrayForEach(e, r) {
        const cJSON *emoji = cJSON_GetObjectItemCaseSensitive(e, "e");
        const cJSON *u = cJSON_GetObjectItemCaseSensitive(e, "u");
        int n = cJSON_IsArray(u) ? cJSON_GetArraySize(u) : 0;
        if (!cJSON_IsString(emoji) || n == 0) {
            continue;
        }
        cJSON *item = cJSON_CreateObject(), *users = NULL;
        if (item == NULL || !cJSON_AddItemToArray(out, item) ||
            cJSON_AddStringToObject(item, "emoji", emoji->valuestring) == NULL ||
            cJSON_AddNumberToObject(item, "count", n) == NULL ||
            (users = cJSON_AddArrayToObject(item, "users")) == NULL) {
            cJSON_Delete(out);
            return NULL;
        }
        const cJSON *who;
        int k = 0;
        cJSON_ArrayForEach(who, u) {
            const cJSON *name = cJSON_IsArray(who) ? cJSON_GetArrayItem(who, 0) : NULL;
            if (k == PROTO_REACTIONS_MAX) {
                break;
            }
            if (cJSON_IsString(name)) {
                cJSON *s = cJSON_CreateString(name->valuestring);
                if (s == NULL || !cJSON_AddItemToArray(users, s)) {
                    cJSON_Delete(s);
                    cJSON_Delete(out);
                    return NULL;
                }
                k++;
            }
        }
    }
    return out;
}

char *proto_fold_message(const char *payload, size_t len, const char *state, size_t slen)
{
    cJSON *m = cJSON_ParseWithLength(payload, len);
    cJSON *st = state != NULL ? cJSON_ParseWithLength(state, slen) : NULL;
    int ok = cJSON_IsObject(m) && (state == NULL || cJSON_IsObject(st));
    if (ok && st != NULL) {
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(st, "c");
        const cJSON *a = cJSON_GetObjectItemCaseSensitive(st, "a");
        const cJSON *e = cJSON_GetObjectItemCaseSensitive(st, "e");
        if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(st, "d")) ||
            cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(st, "d"))) {
            ok = proto_set(m, "content", cJSON_CreateString("")) &&
                 proto_set(m, "attachments", cJSON_CreateArray()) &&
                 proto_set(m, "deleted", cJSON_CreateTrue());
        } else {
            if (ok && cJSON_IsString(c)) {
                ok = proto_set(m, "content", cJSON_CreateString(c->valuestring));
            }
            /* Lua's cjson writes an empty list as {}. */
            if (ok && (cJSON_IsArray(a) || cJSON_IsObject(a))) {
                ok = proto_set(m, "attachments", cJSON_IsArray(a) ? cJSON_Duplicate(a, 1) : cJSON_CreateArray());
            }
            if (ok && cJSON_IsNumber(e)) {
                ok = proto_set(m, "edited", cJSON_CreateNumber(e->valuedouble));
            }
        }
        if (ok && !cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(m, "deleted"))) {
            ok = proto_set(m, "reactions", proto_fold_reactions(cJSON_GetObjectItemCaseSensitive(st, "r")));
        }
    }
    if (ok && cJSON_GetObjectItemCaseSensitive(m, "reactions") == NULL) {
        ok = proto_set(m, "reactions", cJSON_CreateArray());
    }
    cJSON_Delete(st);
    return proto_print(m, ok);
}
