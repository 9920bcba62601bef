/*
 * store: the room data kept in Redis, behind one interface so that the
 * archive can slot in beside it. Per room R (the braces keep a room's keys
 * in one Redis Cluster slot):
 *   chatd:{R}:seq   the last seq given out (INCR)
 *   chatd:{R}:log   stream of the recent messages, entry id "<seq>-1",
 *                   field m = the chat payload JSON; capped near
 *                   recovery-window entries (never below)
 *   chatd:{R}:d:... dedup entries "<seq>:<ts>" with the dedup window as TTL
 *   chatd:{R}:u     hash user -> how many workers hold a connection of it
 *   chatd:{R}:archived  the highest seq MongoDB has (with the archive)
 *   chatd:archive   stream of messages on their way to MongoDB (archive.h)
 *   chatd:{R}       the pub/sub channel
 * and per worker W: chatd:w:W (set of "room\nuser" it holds) and the
 * zset chatd:workers (W -> last heartbeat, ms), so that the entries of a
 * worker that died are reaped by the others.
 * Every write that acks a message happens in one Lua script: seq, log,
 * dedup entry and publish are one atomic step.
 */
#ifndef CHATD_STORE_H
#define CHATD_STORE_H

#include <stddef.h>
#include <stdint.h>

#include <hiredis/hiredis.h>

#include "bus.h"

/* Reply callbacks. r is NULL when Redis was lost before answering. */
typedef void store_cb_t(void *arg, redisReply *r);

/* Prepares the scripts' SHA-1s (once per process; bus_new calls it). */
void store_init(void);

/* Makes the channel name of room into out. Returns its length. */
size_t store_channel(const char *room, char *out, size_t outlen);

/*
 * Accepts a chat message: dedup check, seq, log append, publish. The reply
 * is an array {seq, ts, duplicate}. tail is proto_encode_chat_tail()'s
 * text. Returns 0 when sent, -1 when Redis is unavailable (cb not called).
 */
int store_send(bus_t *b, const char *room, const char *sender, const char *id,
               const char *tail, store_cb_t *cb, void *arg);

/* Log entries with from <= seq <= to (to < 0: up to the newest), at most
 * count; an XRANGE reply. */
int store_range(bus_t *b, const char *room, int64_t from, int64_t to, long count,
                store_cb_t *cb, void *arg);

/* Up to count entries with seq < before (before < 0: the newest), newest
 * first; an XREVRANGE reply. */
int store_history(bus_t *b, const char *room, int64_t before, long count,
                  store_cb_t *cb, void *arg);

/* Sends any command on the command connection; cb (may be NULL) gets the
 * reply. Returns 0, or -1 when Redis is unavailable (cb not called). */
int store_call(bus_t *b, store_cb_t *cb, void *arg, int argc, const char **argv,
               const size_t *lens);

/* Sets the room's counter to seq unless it exists (SET NX). */
int store_seed_seq(bus_t *b, const char *room, int64_t seq, store_cb_t *cb, void *arg);

/* Raises the room's archived cursor to seq (never lowers it). */
void store_set_archived(bus_t *b, const char *room, int64_t seq);

/* The room's last seq (GET; nil for a new room). */
int store_last_seq(bus_t *b, const char *room, store_cb_t *cb, void *arg);

/* The users present in room (an array of names). */
int store_presence(bus_t *b, const char *room, store_cb_t *cb, void *arg);

/* This worker gained its first / lost its last connection of user in
 * room: updates presence, and announces the member event when it is the
 * user's first / last connection anywhere. Fire and forget. */
void store_member(bus_t *b, const char *room, const char *user, int joined);

/* Publishes a typing event. Fire and forget. */
void store_typing(bus_t *b, const char *room, const char *user, int active);

/* Parses one stream entry: its seq and payload. Returns 0 or -1. */
int store_entry(const redisReply *e, int64_t *seq, const char **payload, size_t *len);

/* Called by the bus when the command connection comes up (heartbeat,
 * reaping a dead predecessor), and once a second. */
void store_on_bus_up(bus_t *b);
void store_tick(bus_t *b);

/* Removes this worker's presence entries at a graceful exit. */
void store_retire(bus_t *b);

#endif
