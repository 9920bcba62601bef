/*
 * fuzz_proto: proto_decode on arbitrary bytes, every encoder fed with what
 * was decoded (its output must parse back as JSON and round-trip the
 * strings), and proto_utf8_valid against an independent reference decoder.
 *
 * The input is one client message, exactly as a text frame would carry it.
 */
#include "../../proto/proto.h"
#include "../../common/words.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#define CHECK(cond) do { \
        if (!(cond)) { \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
            abort(); \
        } \
    } while (0)

/*
 * The reference: decode one code point at a time the way RFC 3629 section 4
 * describes it (lead byte gives the length, then range checks on the
 * resulting scalar value), written independently of proto_utf8_valid.
 */
static int ref_utf8_valid(const uint8_t *s, size_t len)
{
    size_t i = 0;
    while (i < len) {
        uint8_t b = s[i];
        uint32_t cp;
        size_t n;
        if ((b & 0x80) == 0) {
            i++;
            continue;
        } else if ((b & 0xE0) == 0xC0) {
            n = 2;
            cp = b & 0x1F;
        } else if ((b & 0xF0) == 0xE0) {
            n = 3;
            cp = b & 0x0F;
        } else if ((b & 0xF8) == 0xF0) {
            n = 4;
            cp = b & 0x07;
        } else {
            return 0;
        }
        if (i + n > len) {
            return 0;
        }
        for (size_t k = 1; k < n; k++) {
            if ((s[i + k] & 0xC0) != 0x80) {
                return 0;
            }
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        static const uint32_t min_for_len[5] = { 0, 0, 0x80, 0x800, 0x10000 };
        if (cp < min_for_len[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
            return 0;
        }
        i += n;
    }
    return 1;
}

/* Parses json (a whole object) and returns the string member name, or NULL. */
static const char *member_string(const cJSON *obj, const char *name)
{
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, name);
    return cJSON_IsString(it) ? it->valuestring : NULL;
}

/* Parses an encoder's output: must be one JSON object with a string
 * "type" equal to type (NULL: no type, the chat tail). */
static cJSON *parse_back(const char *json, const char *type)
{
    CHECK(json != NULL);
    size_t len = strlen(json);
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(json, len, &end, 0);
    CHECK(root != NULL);
    CHECK(end == json + len);
    CHECK(cJSON_IsObject(root));
    if (type != NULL) {
        const char *t = member_string(root, "type");
        CHECK(t != NULL && strcmp(t, type) == 0);
    }
    return root;
}

static const cJSON *payload_of(const cJSON *root)
{
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(root, "payload");
    CHECK(cJSON_IsObject(p));
    return p;
}

static void check_id(const cJSON *root, const char *id)
{
    const char *got = member_string(root, "id");
    if (id == NULL) {
        CHECK(cJSON_GetObjectItemCaseSensitive(root, "id") == NULL);
    } else {
        CHECK(got != NULL && strcmp(got, id) == 0);
    }
}

static void check_str(const cJSON *obj, const char *name, const char *want)
{
    const char *got = member_string(obj, name);
    CHECK(got != NULL && strcmp(got, want) == 0);
}

/*
 * cJSON prints a number with 15 significant digits when that reads back
 * within its epsilon, so integers of 16 digits and more (seq values up to
 * 2^53 are accepted in since/before) come back rounded: exact only below
 * 10^15, which every seq and millisecond ts the server sends is.
 */
static void check_num(const cJSON *obj, const char *name, double want)
{
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, name);
    CHECK(cJSON_IsNumber(it));
    if (want < 1e15 && want > -1e15) {
        CHECK(it->valuedouble == want);
    } else {
        double d = it->valuedouble - want;
        CHECK(d <= want * 1e-14 && -d <= want * 1e-14);
    }
}

/* Invariants of a successfully decoded request. */
static void check_decoded(const proto_req_t *req, const proto_limits_t *lim)
{
    CHECK(req->type >= PROTO_JOIN && req->type <= PROTO_SIGNAL);
    CHECK(req->root != NULL);
    if (req->has_id) {
        size_t n = strlen(req->id);
        CHECK(n >= 1 && n <= PROTO_ID_MAX);
    }
    if (req->type == PROTO_PING || req->type == PROTO_ROOMS) {
        return;
    }
    if (req->type == PROTO_SETKEY) {
        CHECK(req->key != NULL && strlen(req->key) >= 1 && strlen(req->key) <= PROTO_KEY_MAX);
        return;
    }
    if (req->type == PROTO_GETKEYS) {
        int n = cJSON_GetArraySize(req->users);
        CHECK(n >= 1 && n <= PROTO_GETKEYS_MAX);
        const cJSON *u;
        cJSON_ArrayForEach(u, req->users) {
            CHECK(cJSON_IsString(u) && proto_user_valid(u->valuestring, strlen(u->valuestring)));
        }
        return;
    }
    if (req->type == PROTO_ROOMKEY || req->type == PROTO_SIGNAL) {
        CHECK(req->to != NULL && proto_user_valid(req->to, strlen(req->to)));
    }
    if (req->type == PROTO_ROOMKEY) {
        CHECK(strlen(req->key_id) >= 1 && strlen(req->key_id) <= PROTO_KEY_ID_MAX);
        CHECK(strlen(req->wrapped) >= 1 && strlen(req->wrapped) <= PROTO_WRAPPED_MAX);
    }
    if (req->type == PROTO_SIGNAL) {
        CHECK(strlen(req->call_id) >= 1 && strlen(req->call_id) <= PROTO_CALL_ID_MAX);
        CHECK(strlen(req->data) <= PROTO_SIGNAL_DATA_MAX && req->kind != NULL);
    }
    CHECK(req->room != NULL && proto_room_valid(req->room));
    char a[PROTO_USER_MAX + 1], b[PROTO_USER_MAX + 1];
    int dm = proto_dm_users(req->room, a, b);
    CHECK(dm >= -1 && dm <= 1);
    CHECK(dm != 1 || (strcmp(a, b) < 0 && proto_user_valid(a, strlen(a)) && proto_user_valid(b, strlen(b))));
    CHECK(strlen(req->room) <= PROTO_ROOM_PLAIN_MAX || dm == 1);
    switch (req->type) {
    case PROTO_JOIN:
        CHECK(!req->has_since || (req->since >= 0 && req->since <= (INT64_C(1) << 53)));
        break;
    case PROTO_CHAT:
        CHECK(req->content != NULL && req->content_len == strlen(req->content));
        CHECK(req->content_len >= 1 && req->content_len <= lim->max_content);
        if (req->attachments != NULL) {
            CHECK(cJSON_IsArray(req->attachments));
            CHECK(cJSON_GetArraySize(req->attachments) <= PROTO_ATTACH_MAX);
        }
        break;
    case PROTO_TYPING:
        CHECK(req->active == 0 || req->active == 1);
        break;
    case PROTO_HISTORY:
        CHECK(req->limit >= 1 && req->limit <= PROTO_HISTORY_MAX);
        CHECK(!req->has_before || (req->before >= 0 && req->before <= (INT64_C(1) << 53)));
        break;
    case PROTO_EDIT:
        CHECK(req->content != NULL && req->content_len >= 1 && req->content_len <= lim->max_content);
        CHECK(req->target >= 1 && req->target <= (INT64_C(1) << 53));
        break;
    case PROTO_DELETE:
        CHECK(req->target >= 1 && req->target <= (INT64_C(1) << 53));
        break;
    case PROTO_READ:
        CHECK(req->seq >= 0 && req->seq <= (INT64_C(1) << 53));
        break;
    case PROTO_SEARCH:
        CHECK(req->q != NULL && strlen(req->q) >= 1 && strlen(req->q) <= PROTO_QUERY_BYTES);
        CHECK(req->limit >= 1 && req->limit <= PROTO_SEARCH_MAX);
        break;
    case PROTO_REACT: {
        CHECK(req->target >= 1 && req->target <= (INT64_C(1) << 53));
        size_t n = req->emoji != NULL ? strlen(req->emoji) : 0;
        CHECK(n >= 1 && n <= PROTO_EMOJI_MAX);
        for (size_t i = 0; i < n; i++) {
            CHECK((unsigned char)req->emoji[i] >= 0x20 && req->emoji[i] != 0x7f);
        }
        CHECK(req->on == 0 || req->on == 1);
        break;
    }
    default:
        break;
    }
}

/* The event tail parses back with the request's fields, and a message
 * folds with any state text (the store's, or garbage) into valid JSON or
 * NULL. */
static void exercise_events(const proto_req_t *req, proto_err_t rc, const char *user, const char *id,
                            const char *text, size_t len)
{
    if (rc == PROTO_OK && (req->type == PROTO_EDIT || req->type == PROTO_DELETE || req->type == PROTO_REACT)) {
        proto_event_t kind = req->type == PROTO_EDIT ? PROTO_EV_EDIT
                             : req->type == PROTO_DELETE ? PROTO_EV_DELETE : PROTO_EV_REACTION;
        char *tail = proto_encode_event_tail(kind, user, req, id);
        CHECK(tail != NULL);
        size_t tl = strlen(tail);
        char *full = malloc(tl + 4);
        CHECK(full != NULL);
        full[0] = '{';
        memcpy(full + 1, tail, tl + 1);
        /* An edit without attachments leaves their place to the store. */
        char *keep = strstr(full, PROTO_KEEP_ATTACHMENTS);
        CHECK(keep == NULL || (kind == PROTO_EV_EDIT && req->attachments == NULL &&
                               strchr(keep + 1, PROTO_KEEP_ATTACHMENTS[0]) == NULL));
        if (keep != NULL) {
            memmove(keep + 2, keep + 1, strlen(keep + 1) + 1);
            keep[0] = '[';
            keep[1] = ']';
        }
        cJSON *root = parse_back(full, NULL);
        check_str(root, "sender", user);
        check_num(root, "target", (double)req->target);
        if (kind == PROTO_EV_EDIT) {
            check_str(root, "content", req->content);
        } else if (kind == PROTO_EV_REACTION) {
            check_str(root, "emoji", req->emoji);
        }
        cJSON_Delete(root);
        free(full);
        free(tail);
    }
    static const char msg[] = "{\"room\":\"r\",\"seq\":1,\"ts\":2,\"sender\":\"a\","
                              "\"content\":\"x\",\"attachments\":[]}";
    char *f = proto_fold_message(msg, sizeof(msg) - 1, text, len);
    if (f != NULL) {
        cJSON *root = cJSON_Parse(f);
        CHECK(cJSON_IsObject(root));
        CHECK(cJSON_IsArray(cJSON_GetObjectItemCaseSensitive(root, "reactions")));
        cJSON_Delete(root);
        free(f);
    }
    f = proto_fold_message(text, len, NULL, 0);
    if (f != NULL) {
        cJSON *root = cJSON_Parse(f);
        CHECK(cJSON_IsObject(root));
        cJSON_Delete(root);
        free(f);
    }
}

/* Runs every encoder on strings taken from the request, as the session
 * would answer it, and checks that each answer parses back. */
static void exercise_encoders(const proto_req_t *req, proto_err_t rc, const char *why)
{
    const char *id = req->has_id ? req->id : NULL;
    const char *room = req->room != NULL ? req->room : "general";
    /* The session names users with validated names; the encoders must
     * still cope with any string, so also use the request's id. */
    const char *user = id != NULL ? id : "alice";
    char *json;
    cJSON *root;

    json = proto_encode_error(id, rc == PROTO_OK ? PROTO_E_NOT_JOINED : rc,
                              why != NULL ? why : "not joined");
    root = parse_back(json, "error");
    check_id(root, id);
    check_str(payload_of(root), "code",
              proto_err_name(rc == PROTO_OK ? PROTO_E_NOT_JOINED : rc));
    cJSON_Delete(root);
    free(json);

    /* An out-of-range code must still encode (as "internal"). */
    json = proto_encode_error(id, (proto_err_t)(PROTO_E_COUNT + (req->limit & 7)), "x");
    root = parse_back(json, "error");
    check_str(payload_of(root), "code", "internal");
    cJSON_Delete(root);
    free(json);

    json = proto_encode_pong(id);
    root = parse_back(json, "pong");
    check_id(root, id);
    cJSON_Delete(root);
    free(json);

    json = proto_encode_welcome(user, room, 25, 65536, 16384, 20, 40, 1024, "[]");
    root = parse_back(json, "welcome");
    check_str(payload_of(root), "user", user);
    check_str(payload_of(root), "session", room);
    cJSON_Delete(root);
    free(json);

    int64_t seq = req->has_since ? req->since : req->has_before ? req->before : 0;
    json = proto_encode_joined(id, room, seq, req->has_since, seq, (int)(seq & 127));
    root = parse_back(json, "joined");
    check_id(root, id);
    check_str(payload_of(root), "room", room);
    check_num(payload_of(root), "seq", (double)seq);
    cJSON_Delete(root);
    free(json);

    json = proto_encode_left(id, room);
    root = parse_back(json, "left");
    check_id(root, id);
    check_str(payload_of(root), "room", room);
    cJSON_Delete(root);
    free(json);

    int64_t ts = INT64_C(1700000000000) + req->limit;
    json = proto_encode_ack(id, room, seq + 1, ts, req->active);
    root = parse_back(json, "ack");
    check_id(root, id);
    check_num(payload_of(root), "seq", (double)(seq + 1));
    check_num(payload_of(root), "ts", (double)ts);
    cJSON_Delete(root);
    free(json);

    json = proto_encode_typing(room, user, req->active);
    root = parse_back(json, "typing");
    check_str(payload_of(root), "user", user);
    cJSON_Delete(root);
    free(json);

    json = proto_encode_member(room, user, req->active);
    root = parse_back(json, "member");
    check_str(payload_of(root), "event", req->active ? "join" : "leave");
    cJSON_Delete(root);
    free(json);

    /* Presence lists users; take them from the attachments' types. */
    const char *users[PROTO_ATTACH_MAX + 1];
    size_t n = 0;
    users[n++] = user;
    if (req->attachments != NULL) {
        const cJSON *a;
        cJSON_ArrayForEach(a, req->attachments) {
            users[n++] = cJSON_GetObjectItemCaseSensitive(a, "type")->valuestring;
        }
    }
    json = proto_encode_presence(id, room, users, n);
    root = parse_back(json, "presence");
    check_id(root, id);
    const cJSON *arr = cJSON_GetObjectItemCaseSensitive(payload_of(root), "users");
    CHECK(cJSON_IsArray(arr) && (size_t)cJSON_GetArraySize(arr) == n);
    for (size_t i = 0; i < n; i++) {
        const cJSON *u = cJSON_GetArrayItem(arr, (int)i);
        CHECK(cJSON_IsString(u) && strcmp(u->valuestring, users[i]) == 0);
    }
    cJSON_Delete(root);
    free(json);

    if (rc == PROTO_OK && req->type == PROTO_CHAT) {
        char *tail = proto_encode_chat_tail(user, req->content, req->attachments, req->e2e, id);
        CHECK(tail != NULL);
        /* The store splices room, seq and ts in front of the tail. */
        size_t tl = strlen(tail);
        char *full = malloc(tl + 2);
        CHECK(full != NULL);
        full[0] = '{';
        memcpy(full + 1, tail, tl + 1);
        root = parse_back(full, NULL);
        check_str(root, "sender", user);
        check_str(root, "content", req->content);
        if (id != NULL) {
            check_str(root, "cid", id);
        } else {
            CHECK(cJSON_GetObjectItemCaseSensitive(root, "cid") == NULL);
        }
        const cJSON *att = cJSON_GetObjectItemCaseSensitive(root, "attachments");
        CHECK(cJSON_IsArray(att));
        int want = req->attachments != NULL ? cJSON_GetArraySize(req->attachments) : 0;
        CHECK(cJSON_GetArraySize(att) == want);
        for (int i = 0; i < want; i++) {
            const cJSON *src = cJSON_GetArrayItem(req->attachments, i);
            const cJSON *dst = cJSON_GetArrayItem(att, i);
            check_str(dst, "type", member_string(src, "type"));
            check_str(dst, "url", member_string(src, "url"));
            /* A file's name, size and mime travel too, as given. */
            int extra = 0;
            if (strcmp(member_string(src, "type"), "file") == 0) {
                static const char *const names[] = { "name", "size", "mime" };
                for (size_t k = 0; k < 3; k++) {
                    const cJSON *sv = cJSON_GetObjectItemCaseSensitive(src, names[k]);
                    const cJSON *dv = cJSON_GetObjectItemCaseSensitive(dst, names[k]);
                    CHECK((sv == NULL) == (dv == NULL));
                    CHECK(sv == NULL || cJSON_Compare(sv, dv, 1));
                    extra += sv != NULL;
                }
            }
            CHECK(cJSON_GetArraySize(dst) == 2 + extra);
        }
        const cJSON *e2e = cJSON_GetObjectItemCaseSensitive(root, "e2e");
        CHECK((e2e == NULL) == (req->e2e == NULL));
        if (e2e != NULL) {
            check_str(e2e, "keyId", member_string(req->e2e, "keyId"));
            check_str(e2e, "iv", member_string(req->e2e, "iv"));
            CHECK(cJSON_GetArraySize(e2e) == 2);
        }
        cJSON_Delete(root);
        free(full);
        free(tail);
    }
    if (rc == PROTO_OK && req->type == PROTO_SIGNAL) {
        json = proto_encode_signal(user, req->room, req->call_id, req->kind, req->data);
        root = parse_back(json, "signal");
        check_str(payload_of(root), "data", req->data);
        check_str(payload_of(root), "callId", req->call_id);
        cJSON_Delete(root);
        free(json);
    }
    if (rc == PROTO_OK && req->type == PROTO_ROOMKEY) {
        json = proto_encode_roomkey(req->room, user, req->key_id, req->wrapped);
        root = parse_back(json, "roomkey");
        check_str(payload_of(root), "wrapped", req->wrapped);
        CHECK(member_string(payload_of(root), "to") == NULL);
        cJSON_Delete(root);
        free(json);
    }
    if (rc == PROTO_OK && req->type == PROTO_GETKEYS) {
        const char *vals[PROTO_GETKEYS_MAX];
        int nu = cJSON_GetArraySize(req->users);
        for (int i = 0; i < nu; i++) {
            vals[i] = i % 2 ? NULL : user;
        }
        json = proto_encode_keys(id, req->users, vals);
        root = parse_back(json, "keys");
        const cJSON *keys = cJSON_GetObjectItemCaseSensitive(payload_of(root), "keys");
        CHECK(cJSON_IsObject(keys) && cJSON_GetArraySize(keys) <= nu);
        cJSON_Delete(root);
        free(json);
    }
}

/*
 * 1 when a raw (unescaped) NUL byte sits inside a JSON string literal of
 * text. cJSON copies it and the string ends there, which is exactly the
 * silent truncation proto_has_escaped_nul() refuses for "\\u0000".
 */
static int raw_nul_in_string(const char *text, size_t len)
{
    int in_string = 0;
    for (size_t i = 0; i < len; i++) {
        char c = text[i];
        if (!in_string) {
            in_string = c == '"';
        } else if (c == '\\') {
            i++;
        } else if (c == '"') {
            in_string = 0;
        } else if (c == '\0') {
            return 1;
        }
    }
    return 0;
}

/* Fails on accepted messages whose strings hold a raw NUL (found by this
 * target, fixed in proto_decode; regressions/fuzz_proto/ keeps the input).
 * FUZZ_STRICT=0 turns the check off. */
static int strict;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    const char *s = getenv("FUZZ_STRICT");
    strict = s == NULL || strcmp(s, "0") != 0;
    return 0;
}

static void decode_one(const char *text, size_t len, size_t max_content, int utf8)
{
    proto_limits_t lim = { .max_content = max_content };
    proto_req_t req;
    const char *why = NULL;
    proto_err_t rc = proto_decode(text, len, &lim, &req, &why);
    CHECK(rc >= PROTO_OK && rc < PROTO_E_COUNT);
    if (rc == PROTO_OK) {
        check_decoded(&req, &lim);
        if (strict && raw_nul_in_string(text, len)) {
            fprintf(stderr, "accepted a message with a raw NUL inside a string\n");
            abort();
        }
    } else {
        CHECK(why != NULL);
        if (req.has_id) {
            CHECK(strlen(req.id) >= 1 && strlen(req.id) <= PROTO_ID_MAX);
        }
    }
    /* The server answers only valid UTF-8 messages, but the encoders must
     * round-trip any bytes, so they run on every decoded request. */
    (void)utf8;
    exercise_encoders(&req, rc, why);
    exercise_events(&req, rc, req.has_id ? req.id : "alice", req.has_id ? req.id : NULL, text, len);
    proto_req_free(&req);
    CHECK(req.root == NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* An exact-size copy, so ASan sees any read past the frame. */
    char *text = malloc(size ? size : 1);
    if (text == NULL) {
        return 0;
    }
    memcpy(text, data, size);

    int valid = proto_utf8_valid((const uint8_t *)text, size);
    int ref = ref_utf8_valid(data, size);
    if (valid != ref) {
        fprintf(stderr, "proto_utf8_valid=%d, reference=%d\n", valid, ref);
        abort();
    }
    /* Every prefix must agree too: truncated sequences at the end are the
     * classic off-by-one (only for short inputs, it is quadratic). */
    if (size <= 64) {
        for (size_t k = 0; k < size; k++) {
            CHECK(proto_utf8_valid(data, k) == ref_utf8_valid(data, k));
        }
    }

    /* The name rules, on the input as one NUL-terminated name. */
    char *name = malloc(size + 1);
    if (name != NULL) {
        memcpy(name, data, size);
        name[size] = '\0';
        size_t n = strlen(name);
        int room_ok = proto_room_valid(name);
        int user_ok = proto_user_valid(name, n);
        CHECK(!room_ok || (n >= 1 && n <= PROTO_ROOM_MAX));
        CHECK(!user_ok || (n >= 1 && n <= PROTO_USER_MAX && room_ok && strchr(name, ':') == NULL));
        free(name);
    }

    /* The search words of any valid text: distinct, non-empty, valid
     * UTF-8, and a text always matches the query of its own words. */
    if (valid) {
        words_t w;
        CHECK(words_of(text, size, &w) == 0);
        size_t count = 0;
        for (const char *x = w.n > 0 ? w.buf : NULL; x != NULL; x = words_next(&w, x)) {
            CHECK(x[0] != '\0' && proto_utf8_valid((const uint8_t *)x, strlen(x)));
            /* Pairwise only for small inputs: it is quadratic. */
            for (const char *y = w.buf; w.n <= 200 && y != x; y = words_next(&w, y)) {
                CHECK(strcmp(x, y) != 0);
            }
            count++;
        }
        CHECK(count == w.n);
        if (w.n > 0 && w.n <= WORDS_QUERY_MAX) {
            CHECK(words_match(&w, &w) == 1);
        }
        words_free(&w);
    }

    /* A small max_content, so too_large is reachable. */
    decode_one(text, size, 64, valid);
    if (valid) {
        decode_one(text, size, 16384, valid);
    }
    free(text);
    return 0;
}
