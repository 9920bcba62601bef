/*
 * store: the room data kept in Redis, behind one interface so that the
 * archive can slot in beside it. Per room R (the braces keep a room's keys
 * in one Redis Cluster slot, so every script runs on one node):
 *   chatd:{R}:seq       the last seq given out (INCR)
 *   chatd:{R}:log       stream of the recent messages, entry id "<seq>-1",
 *                       field m = the chat payload JSON; capped near
 *                       recovery-window entries (never below)
 *   chatd:{R}:d:...     dedup entries "<seq>:<ts>" with the dedup window as TTL
 *   chatd:{R}:durable   with --ack-replicas: the highest seq the replicas
 *                       are known to hold; readers see nothing above it
 *   chatd:{R}:u         hash user -> how many workers hold a connection of it
 *   chatd:{R}:h:W       the users worker W holds in R
 *   chatd:{R}:archived  a seq up to which MongoDB has every entry of the
 *                       room (with the archive)
 *   chatd:{R}           the pub/sub channel (sharded in a cluster)
 * the archive queue (store_queue_key), and per worker W: chatd:w:{W} (the
 * rooms it has entries in) and the zset chatd:workers (W -> last
 * heartbeat, ms), so that the entries of a worker that died are reaped by
 * the others.
 * Every write that acks a message happens in one Lua script: seq, log,
 * dedup entry and publish are one atomic step. With --ack-replicas N the
 * ack waits until N replicas hold that step (WAIT), and only then is the
 * message published and let below the durable mark.
 */
#ifndef CHATD_STORE_H
#define CHATD_STORE_H

#include <stddef.h>
#include <stdint.h>

#include <hiredis/hiredis.h>

#include "bus.h"

/* Reply callbacks. r is NULL when Redis was lost before answering. */
typedef void store_cb_t(void *arg, redisReply *r);

/* What store_send reports. */
enum {
    STORE_OK = 0,
    STORE_UNAVAILABLE,          /* Redis lost or erred: not known to be stored */
    STORE_NOT_DURABLE,          /* stored, but the replicas did not confirm in time */
    STORE_NO_COUNTER,           /* the room has no counter: seed it from the archive */
    STORE_NOT_FOUND,            /* an event's target is not a message of the log */
    STORE_FORBIDDEN,            /* the user may not do this to the target */
    STORE_TOO_MANY,             /* a new emoji on a message that has 20 */
    STORE_IN_ARCHIVE            /* the target is older than the log: send again with it from the archive */
};
typedef struct store_ack_s {
    int64_t seq;
    int64_t ts;                 /* ms */
    int duplicate;              /* an earlier send with this id was stored */
} store_ack_t;
typedef void store_send_cb_t(void *arg, int status, const store_ack_t *ack);

/* Prepares the scripts' SHA-1s and, in a cluster, the per-slot archive
 * queue names (once per process; bus_new calls it). */
void store_init(int cluster);

/* Makes the channel name of room into out. Returns its length. */
size_t store_channel(const char *room, char *out, size_t outlen);

/*
 * Accepts a chat message: dedup check, seq, log append, publish (after the
 * replicas confirmed, with --ack-replicas). tail is
 * proto_encode_chat_tail()'s text. Returns 0 when sent (cb runs once with
 * a status above; ack is filled when it is STORE_OK or STORE_NOT_DURABLE),
 * -1 when Redis is unavailable (cb not called).
 */
int store_send(bus_t *b, const char *room, const char *sender, const char *id,
               const char *tail, store_send_cb_t *cb, void *arg);

/* A room event besides chat. */
typedef struct store_event_s {
    const char *kind;           /* "edit", "delete", "reaction" */
    int64_t target;             /* the message's seq */
    int admin;                  /* the user may delete anyone's message */
    const char *emoji;          /* reaction */
    int on;                     /* reaction */
    const char *seed_msg;       /* after STORE_IN_ARCHIVE: the archive's payload and state, */
    const char *seed_state;     /* else NULL */
} store_event_t;

/*
 * Accepts a room event the way store_send accepts a chat (same dedup,
 * seq, durability and callback), checking its target in the same atomic
 * step: cb may also get STORE_NOT_FOUND, STORE_FORBIDDEN, STORE_TOO_MANY,
 * STORE_IN_ARCHIVE (see seed_msg),
 * or STORE_OK with duplicate set and the seq of the event that made the
 * state a reaction asks for (nothing is stored or broadcast then). tail is
 * proto_encode_event_tail()'s text.
 */
int store_event(bus_t *b, const char *room, const char *sender, const char *id, const char *tail,
                const store_event_t *ev, store_send_cb_t *cb, void *arg);

/* The archive queue the send script appends room's messages to: one
 * stream for one Redis, one per slot in a cluster (a key in the room's
 * slot). */
size_t store_queue_key(const bus_t *b, const char *room, char *out, size_t outlen);

/* The cluster archive queue of one hash slot. */
size_t store_slot_queue(unsigned slot, char *out, size_t outlen);

/* Log entries (events of every type) with from <= seq <= to (to < 0: up
 * to the newest), at most count; an array of entries (store_entry). */
int store_range(bus_t *b, const char *room, int64_t from, int64_t to, long count,
                store_cb_t *cb, void *arg);

/* Up to count chat messages with seq < before (before < 0: the newest),
 * newest first, each with its state record; read the reply with
 * store_history_reply(). */
int store_history(bus_t *b, const char *room, int64_t before, long count,
                  store_cb_t *cb, void *arg);

/* Sends any command (argv[1] is its key, which routes it); cb (may be
 * NULL) gets the reply. Returns 0, or -1 when Redis is unavailable (cb not
 * called). */
int store_call(bus_t *b, store_cb_t *cb, void *arg, int argc, const char **argv,
               const size_t *lens);

/* The same, routed by key (for commands whose key is not argv[1]). */
int store_call_key(bus_t *b, const char *key, store_cb_t *cb, void *arg, int argc, const char **argv,
                   const size_t *lens);

/* Sets the room's counter to seq unless it exists (SET NX). */
int store_seed_seq(bus_t *b, const char *room, int64_t seq, store_cb_t *cb, void *arg);

/* An entry of an archive queue that MongoDB now holds. */
typedef struct {
    const char *room;
    const char *id;             /* its queue entry id */
    int64_t seq;
} store_archived_t;

/*
 * Raises the archived cursors of the rooms of e[0..n), entries of queue
 * that were written to MongoDB and whose XACK was sent just before on the
 * same link. A cursor passes only entries older than every one still
 * pending in the queue's group (see store_archived_lua), and is never
 * lowered. Returns 0 when sent (or nothing to send), -1 when Redis is
 * unavailable or memory ran out.
 */
int store_set_archived(bus_t *b, const char *queue, const store_archived_t *e, size_t n);

/* The room's last seq, shaped as GET's reply (nil for a new room); with
 * --ack-replicas the last durable one. */
int store_last_seq(bus_t *b, const char *room, store_cb_t *cb, void *arg);

/* The users present in room (an array of names). */
int store_presence(bus_t *b, const char *room, store_cb_t *cb, void *arg);

/* This worker gained its first / lost its last connection of user in
 * room: updates presence, and announces the member event when it is the
 * user's first / last connection anywhere. Fire and forget. */
void store_member(bus_t *b, const char *room, const char *user, int joined);

/* Publishes a typing event. Fire and forget. */
void store_typing(bus_t *b, const char *room, const char *user, int active);

/*
 * Users. Each user has a channel ("chatd:u:{user}", sharded by the user's
 * name in a cluster) that every worker holding a connection of the user
 * subscribes to, and an index of the rooms they joined or got a direct
 * message in.
 */
size_t store_user_channel(const char *user, char *out, size_t outlen);

/* Publishes msg (len bytes) on user's channel. Fire and forget. */
void store_user_publish(bus_t *b, const char *user, const char *msg, size_t len);

/* The same, with the publish's reply (an integer: how many subscribers,
 * i.e. workers holding a connection of the user, got it). */
int store_user_publish_counted(bus_t *b, const char *user, const char *msg, size_t len,
                               store_cb_t *cb, void *arg);

/* A user's public key (chatd:k:{user}): set, and read (nil when none). */
int store_set_user_key(bus_t *b, const char *user, const char *key, store_cb_t *cb, void *arg);
int store_get_user_key(bus_t *b, const char *user, store_cb_t *cb, void *arg);

/* The room-key mailbox of a user in a room (chatd:{R}:rk:<user>): the
 * latest STORE_ROOM_KEYS_MAX entries (JSON texts), oldest first; an entry
 * given again moves to the end instead of being kept twice. */
#define STORE_ROOM_KEYS_MAX 100
int store_put_room_key(bus_t *b, const char *room, const char *user, const char *entry,
                       store_cb_t *cb, void *arg);
int store_room_keys(bus_t *b, const char *room, const char *user, store_cb_t *cb, void *arg);

/* Where user stands in room: an array {the room's seq, the user's read
 * cursor, unread messages up to 100, ts of the room's last event}. */
int store_room_state(bus_t *b, const char *room, const char *user, store_cb_t *cb, void *arg);

/* Moves user's read cursor of room forward to seq (never back, never past
 * the room's seq), announcing it to the room while it is small: an array
 * {1 when it moved, the cursor}. */
int store_read_cursor(bus_t *b, const char *room, const char *user, int64_t seq, store_cb_t *cb, void *arg);

/* Marks room as one of user's rooms (touched now). Fire and forget. */
void store_user_room(bus_t *b, const char *user, const char *room);

/* user's rooms, most recently touched first, at most 500 (an array of
 * names). */
int store_user_rooms(bus_t *b, const char *user, store_cb_t *cb, void *arg);

/* One entry of a read: pointers into the reply. */
typedef struct store_entry_s {
    int64_t seq;
    const char *type;           /* "chat", "edit", "delete", "reaction" */
    const char *payload;        /* the frame's payload JSON, len bytes */
    size_t len;
    const char *state;          /* history: the message's state record, or NULL */
    size_t slen;
} store_entry_t;

/* Parses one entry of a store_range or store_history reply. Returns 0 or
 * -1. */
int store_entry(const redisReply *e, store_entry_t *out);

/* Splits a store_history reply: the entries (newest first), the lowest seq
 * the log was read down to, and whether the log has nothing below it.
 * Returns 0, or -1 when r is not such a reply. */
int store_history_reply(const redisReply *r, const redisReply **entries, int64_t *lowest, int *ended);

/* Called by the bus when a node's command link ac comes up (loads the
 * scripts there), and once a second (heartbeat, reaping). */
void store_on_node_up(bus_t *b, redisAsyncContext *ac);
void store_tick(bus_t *b);

#endif
