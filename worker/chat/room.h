/*
 * room: a room as seen by one worker: its local members, its channel
 * subscription and the table of rooms. The concerns around a room live
 * beside it: delivery (in-order delivery and replay), message (accepting
 * chat), history, presence (and typing). This header is the chat wing's
 * shared vocabulary; nothing outside the wing includes it.
 */
#ifndef CHATD_ROOM_H
#define CHATD_ROOM_H

#include <stddef.h>
#include <stdint.h>

#include "../../proto/proto.h"
#include "../data/store.h"
#include "../net/wsframe.h"
#include "chat.h"
#include "session.h"

enum { SUB_NONE = 0, SUB_PENDING, SUB_LIVE, SUB_LEAVING };
enum { MEMBER_WAITING = 0, MEMBER_REPLAYING, MEMBER_LIVE };

/* One message as the room holds it while it waits to be delivered. */
typedef struct frame_s {
    struct frame_s *next;
    int64_t seq;
    uint64_t ts_us;             /* when Redis assigned the seq */
    wsframe_t *wf;              /* the "chat" frame, framed once for every member */
} frame_t;

struct room_s {
    chat_t *chat;
    room_t *hnext;
    struct member_s *members;
    size_t nmembers;
    int64_t last_seq;           /* last seq delivered here; -1 until known */
    uint8_t sub;
    uint8_t syncing;            /* a fetch from the store is in flight */
    uint32_t ops;               /* store calls in flight that point here */
    frame_t *pending;           /* arrived ahead of last_seq + 1, by seq */
    char name[PROTO_ROOM_MAX + 1];
};

/* What a member needs only until it is live (joined sent, replay done). */
typedef struct member_join_s {
    uint64_t serial;            /* tells a replay reply which join it answers */
    uint64_t started_ms;        /* loop time of the join request */
    int64_t read_seq;           /* the user's read cursor, once read_ready */
    int unread;
    int read_ready;
    int64_t since;              /* the join's since, -1 when none */
    struct held_s *held, *held_tail;  /* live frames held back during replay */
    char id[];                  /* the join's request id, "" when none */
} member_join_t;

/* A connection's membership of a room. */
typedef struct member_s {
    room_t *room;
    conn_t *conn;
    struct member_s *room_prev, *room_next;
    struct member_s *conn_next;
    int64_t last_seq;           /* last seq sent to this conn */
    member_join_t *join;        /* until live; NULL after */
    uint8_t state;              /* MEMBER_* */
} member_t;

/* What an asynchronous store or archive call remembers. */
typedef struct room_call_s {
    conn_t *conn;               /* referenced, or NULL */
    room_t *room;               /* ops counted; never NULL */
    uint64_t serial;            /* the member it is for */
    int has_id;
    char id[PROTO_ID_MAX + 1];
    int64_t since;
    int64_t upto;
    int64_t before;             /* history: the request's before, -1 = newest */
    char *tail;                 /* chat: the encoded payload tail, owned */
    store_event_t event;        /* edit, delete, react (kind NULL for chat) */
    char *emoji;                /* react: event.emoji's bytes, owned */
    char *seed_msg;             /* an event on an archived message: its payload, */
    char *seed_state;           /* and its state, owned */
    int seeded;                 /* chat: the counter was seeded once already */
    char **texts;               /* history: payloads from Redis, newest first, owned */
    size_t ntexts;
    char *to;                   /* roomkey, signal: the receiver, owned */
    char *key_id;               /* roomkey, owned */
    char *wrapped;              /* roomkey: the frame to relay, owned */
} room_call_t;

/* join and leave requests. */
/* Whether auth may use room (join it, upload to it, read its files):
 * the dm: rule, then the token's rooms claim. 0 with a reason in *why. */
int room_allowed(const auth_t *auth, const char *room, const char **why);

void room_join(conn_t *c, const proto_req_t *req);
void room_leave(conn_t *c, const proto_req_t *req);

/* Answers a join still waiting with `unavailable` and ends the
 * membership. */
void room_refuse_join(chat_t *ch, member_t *m);

/* Ends every membership of c (on disconnect). */
void room_leave_all(conn_t *c);

/* c's membership of room, or NULL. */
member_t *room_member_of(conn_t *c, const char *room);

/* A call for an asynchronous reply about r, holding c (may be NULL) and r
 * until room_call_free(). Returns NULL when out of memory. */
room_call_t *room_call_new(conn_t *c, room_t *r);
void room_call_free(room_call_t *call);

/*
 * The call of a request that needs the room joined: answers not_joined (or
 * internal) itself and returns NULL, or returns the call with the
 * request's id, holding c and the room.
 */
room_call_t *room_request_call(conn_t *c, const proto_req_t *req);

/* The same for a request relayed to another user of the room (roomkey,
 * signal): the receiver req->to must be allowed the room too, as far as
 * chatd can know (forbidden otherwise). */
room_call_t *room_request_relay(conn_t *c, const proto_req_t *req);

/* Bus events, through chat's handler table. */
void room_on_bus_message(chat_t *ch, const char *channel, size_t clen, const char *msg, size_t len);
void room_on_bus_subscribed(chat_t *ch, const char *channel, size_t clen, int subscribed);
void room_on_bus_up(chat_t *ch);
void room_on_bus_down(chat_t *ch);

/* Once a second: unsubscribes rooms left empty and frees them. */
void room_tick(chat_t *ch);

/* Frees every room at worker exit. */
void room_free_all(chat_t *ch);

/* Calls fn once for every (room, user) held on this worker. */
void room_each_local_user(chat_t *ch, void (*fn)(chat_t *ch, const char *room, const char *user));

#endif
