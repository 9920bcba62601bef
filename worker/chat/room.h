/*
 * room: a room as seen by one worker: its local members, the channel
 * subscription, and the in-order delivery of its messages. Messages arrive
 * from Redis pub/sub tagged with their seq; a room delivers seq N only
 * after N-1, fetching any gap from the store, so every local member sees
 * the room in seq order exactly once. Each frame is encoded once and
 * queued to every member.
 */
#ifndef CHATD_ROOM_H
#define CHATD_ROOM_H

#include <stddef.h>
#include <stdint.h>

#include "../proto/proto.h"

typedef struct conn_s conn_t;
typedef struct worker_s worker_t;
typedef struct room_s room_t;

/* One message as the room holds it while it waits to be delivered. */
typedef struct frame_s {
    struct frame_s *next;
    int64_t seq;
    uint64_t ts_us;             /* when Redis assigned the seq */
    size_t len;
    char data[];                /* the complete "chat" frame text */
} frame_t;

/* A connection's membership of a room. */
typedef struct member_s {
    room_t *room;
    conn_t *conn;
    struct member_s *room_prev, *room_next;
    struct member_s *conn_next;
    int64_t last_seq;           /* last seq sent to this conn */
    int64_t since;              /* the join's since, -1 when none */
    uint64_t serial;            /* tells a replay reply which join it answers */
    char *join_id;              /* the join's request id until joined is sent */
    uint8_t state;              /* MEMBER_* in room.c */
    frame_t *held, *held_tail;  /* live frames held back during replay */
} member_t;

void room_join(conn_t *c, const proto_req_t *req);
void room_leave(conn_t *c, const proto_req_t *req);
void room_chat(conn_t *c, const proto_req_t *req);
void room_typing(conn_t *c, const proto_req_t *req);
void room_history(conn_t *c, const proto_req_t *req);
void room_presence(conn_t *c, const proto_req_t *req);

/* Ends every membership of c (on disconnect). */
void room_leave_all(conn_t *c);

/* Bus events. */
void room_on_bus_message(worker_t *w, const char *channel, size_t clen,
                         const char *msg, size_t len);
void room_on_bus_subscribed(worker_t *w, const char *channel, size_t clen, int subscribed);
void room_on_bus_up(worker_t *w);
void room_on_bus_down(worker_t *w);

/* Once a second: unsubscribes rooms left empty. */
void room_tick(worker_t *w);

/* Frees every room at worker exit. */
void room_free_all(worker_t *w);

/* Calls fn for every (room, user) held on this worker, for presence upkeep. */
void room_each_local_user(worker_t *w, void (*fn)(worker_t *w, const char *room,
                                                  const char *user, void *arg), void *arg);

#endif
