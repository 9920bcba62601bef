/*
 * proto: the chat wire protocol (see docs/protocol.md) as pure functions.
 * Decoding turns one text frame into a validated proto_req_t; encoding turns
 * server events into JSON text. No I/O and no global state, so every
 * function here is unit-tested and fuzzed in memory.
 */
#ifndef CHATD_PROTO_H
#define CHATD_PROTO_H

#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#define PROTO_ID_CHARS 64          /* the contract counts characters */
#define PROTO_ID_MAX (PROTO_ID_CHARS * 4)  /* bytes: 64 characters of UTF-8 */
#define PROTO_ROOM_MAX 132         /* a direct-message room; others 128 */
#define PROTO_ROOM_PLAIN_MAX 128
#define PROTO_USER_MAX 64
#define PROTO_ATTACH_MAX 10
#define PROTO_URL_MAX 2048
#define PROTO_FILE_NAME_MAX 255     /* a file's name and type */
#define PROTO_HISTORY_DEFAULT 50
#define PROTO_HISTORY_MAX 100
#define PROTO_SEARCH_DEFAULT 20
#define PROTO_SEARCH_MAX 50
#define PROTO_QUERY_BYTES 256
#define PROTO_EMOJI_MAX 32         /* bytes */
#define PROTO_REACTIONS_MAX 20     /* distinct emoji per message */

typedef enum {
    PROTO_JOIN = 1,
    PROTO_LEAVE,
    PROTO_CHAT,
    PROTO_TYPING,
    PROTO_HISTORY,
    PROTO_PRESENCE,
    PROTO_PING,
    PROTO_EDIT,
    PROTO_DELETE,
    PROTO_REACT,
    PROTO_READ,
    PROTO_ROOMS,
    PROTO_SEARCH
} proto_type_t;

/* Error codes of the contract, in its order. */
typedef enum {
    PROTO_OK = 0,
    PROTO_E_BAD_REQUEST,
    PROTO_E_UNAUTHORIZED,
    PROTO_E_FORBIDDEN,
    PROTO_E_NOT_JOINED,
    PROTO_E_TOO_LARGE,
    PROTO_E_RATE_LIMITED,
    PROTO_E_UNAVAILABLE,
    PROTO_E_INTERNAL,
    PROTO_E_NOT_FOUND,          /* version 1.1 */
    PROTO_E_COUNT
} proto_err_t;

/* The wire name of an error code ("bad_request", ...). */
const char *proto_err_name(proto_err_t code);

/*
 * A decoded request. Pointers point into root, which the request owns:
 * release it with proto_req_free().
 */
typedef struct proto_req_s {
    proto_type_t type;
    int has_id;
    char id[PROTO_ID_MAX + 1];
    cJSON *root;
    const char *room;
    int has_since;
    int64_t since;
    int has_before;
    int64_t before;
    int limit;
    const char *content;
    size_t content_len;
    const cJSON *attachments;   /* validated array, or NULL */
    int active;                 /* typing */
    int64_t target;             /* edit, delete, react: the message's seq */
    const char *emoji;          /* react */
    int on;                     /* react */
    int64_t seq;                /* read */
    const char *q;              /* search: the query text (its words are the chat wing's business) */
} proto_req_t;

typedef struct proto_limits_s {
    size_t max_content;
} proto_limits_t;

/*
 * Decodes and validates one client message of len bytes (already known to
 * be valid UTF-8). On success returns PROTO_OK and fills req. On failure
 * returns the error code and points *why at a static message; req->has_id
 * and req->id are still set when the envelope carried a valid id, so the
 * error can echo it. Either way the caller calls proto_req_free(req).
 */
proto_err_t proto_decode(const char *text, size_t len, const proto_limits_t *lim,
                         proto_req_t *req, const char **why);

void proto_req_free(proto_req_t *req);

/* Returns 1 when s is well-formed UTF-8 (RFC 3629: no overlongs, no
 * surrogates, nothing above U+10FFFF), else 0. */
int proto_utf8_valid(const uint8_t *s, size_t len);

/* Name rules of the contract. Return 1 when valid. A room name is up to
 * 128 characters, or a direct-message room's "dm:A:B" up to 132. */
int proto_room_valid(const char *room);

/*
 * A direct-message room "dm:A:B": A and B are two different valid user
 * names, A sorting before B bytewise. Returns 1 and copies the two names
 * (each PROTO_USER_MAX + 1 bytes) when room is one; 0 when it is not a
 * "dm:" name at all; -1 when it starts with "dm:" but is not well formed
 * (such names are refused: no one could tell whose they are).
 */
int proto_dm_users(const char *room, char *a, char *b);
int proto_user_valid(const char *user, size_t len);

/*
 * Encoders. Each returns a NUL-terminated malloc'd JSON text the caller
 * frees with free(), or NULL when memory ran out. id may be NULL.
 */
char *proto_encode_error(const char *id, proto_err_t code, const char *message);
char *proto_encode_pong(const char *id);
char *proto_encode_welcome(const char *user, const char *session, int heartbeat,
                           int max_message, int max_content, int rate, int burst, int max_file);
char *proto_encode_joined(const char *id, const char *room, int64_t seq, int recovered,
                          int64_t read_seq, int unread);
char *proto_encode_ok(const char *id);
char *proto_encode_receipt(const char *room, const char *user, int64_t seq);
char *proto_encode_notify(const char *room, const char *from, int64_t seq);

/* One room of the rooms answer. */
typedef struct proto_room_state_s {
    const char *room;
    int64_t seq;
    int64_t read_seq;
    int unread;
} proto_room_state_t;
char *proto_encode_rooms(const char *id, const proto_room_state_t *rooms, size_t n);
char *proto_encode_left(const char *id, const char *room);
char *proto_encode_ack(const char *id, const char *room, int64_t seq, int64_t ts, int duplicate);
char *proto_encode_typing(const char *room, const char *user, int active);
char *proto_encode_member(const char *room, const char *user, int joined);
char *proto_encode_presence(const char *id, const char *room, const char *const *users, size_t n);

/* The kinds of room events besides chat, as stored and broadcast. */
typedef enum { PROTO_EV_EDIT = 0, PROTO_EV_DELETE, PROTO_EV_REACTION } proto_event_t;

/* The frame type of an event kind ("edit", "delete", "reaction"). */
const char *proto_event_name(proto_event_t kind);

/*
 * The tail of a stored event payload, like the chat tail below:
 * `"sender":...,"target":N,` then `"content":...,"attachments":[...]`
 * (edit) or `"emoji":...,"on":b` (reaction), then `"cid":...}`. The
 * request's fields are taken as proto_decode() validated them. An edit
 * that gives no attachments keeps the message's: its tail holds
 * PROTO_KEEP_ATTACHMENTS as the attachments' value, which the store
 * replaces with the message's current ones (so the tail alone is not
 * JSON then).
 */
#define PROTO_KEEP_ATTACHMENTS "\001"
char *proto_encode_event_tail(proto_event_t kind, const char *sender, const proto_req_t *req,
                              const char *cid);

/*
 * A message as history shows it: the stored chat payload (JSON text of
 * len bytes) with the state of its later events folded in. state is the
 * store's JSON record of those events, or NULL when there were none:
 * {"c": content, "a": attachments, "e": edited ts, "d": 1 when deleted,
 * "r": [{"e": emoji, "u": [[user, seq, ts], ...]}, ...]}. Adds `edited`,
 * `deleted` and `reactions` ({emoji, count, users: at most 20}) as the
 * contract says. Returns a malloc'd JSON text, or NULL when either input is
 * not what the store writes or memory ran out.
 */
char *proto_fold_message(const char *payload, size_t len, const char *state, size_t slen);

/*
 * The tail of a stored chat payload: everything after "room", "seq" and
 * "ts", i.e. `"sender":...,"content":...,"attachments":[...],"cid":...}`
 * (cid omitted when NULL). The store splices room, seq and ts in front of
 * it when it assigns them, so the payload is encoded once per message.
 */
char *proto_encode_chat_tail(const char *sender, const char *content,
                             const cJSON *attachments, const char *cid);

#endif
