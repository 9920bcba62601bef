/*
 * archive: the MongoDB copy of every accepted message, for history beyond
 * what Redis keeps. The send script appends each message to the Redis
 * stream chatd:archive, the durable queue (in a Redis Cluster one queue per
 * hash slot, store_slot_queue(), as a script may only touch its room's
 * slot); every worker of every host reads it through the consumer group
 * "archivers", writes batches to
 * MongoDB with unordered bulk inserts (the _id is derived from room and seq,
 * so a retry only meets its own documents: duplicate keys count as stored),
 * and only then acknowledges and deletes the entries and advances the
 * room's archived cursor (chatd:{R}:archived), below which the room's
 * recent log may be trimmed. A worker that dies leaves its batch pending in
 * the group; another claims it after ARCHIVE_CLAIM_IDLE_MS.
 *
 * mongo-c-driver is blocking, so every MongoDB call runs on libuv's thread
 * pool (uv_queue_work) with a client from one mongoc_client_pool per
 * worker; results come back on the loop. Without --mongo-uri nothing here
 * runs and chatd keeps only Redis's recent log.
 */
#ifndef CHATD_ARCHIVE_H
#define CHATD_ARCHIVE_H

#include <stddef.h>
#include <stdint.h>

#include "../../common/words.h"
#include "bus.h"

typedef struct archive_s archive_t;

/* Creates the archive when a MongoDB URI is configured; NULL when none is
 * (not an error) or on failure (logged). It reads its queue and writes its
 * cursors through bus b, and shares b's environment. */
archive_t *archive_new(bus_t *b);

/* Stops taking work; queued jobs still finish and call back. */
void archive_close(archive_t *a);

/* Frees the archive after the loop has run out. */
void archive_free(archive_t *a);

/* Once a second: read the queue, claim abandoned batches, measure backlog.
 * In a cluster each worker reads the queues of the slots it sent to
 * (archive_note_room) and sweeps every slot's queue in turn, so the
 * entries of a worker that died are found by the others. */
void archive_tick(archive_t *a);

/* A message of room was just queued: read its slot's queue soon. */
void archive_note_room(archive_t *a, const char *room);

/* Messages older than seq before (before < 0: the newest), newest first,
 * at most limit; cb gets an array of payload JSON texts, or n < 0 when
 * MongoDB failed. The texts belong to the archive until cb returns. */
typedef void archive_find_cb_t(void *arg, char **payloads, int n);
int archive_find(archive_t *a, const char *room, int64_t before, int limit,
                 archive_find_cb_t *cb, void *arg);

/* Messages of room below seq before (before < 0: the newest) holding the
 * words of q (see words_match), newest first, at most limit; cb as for
 * archive_find. */
int archive_search(archive_t *a, const char *room, const words_t *q, int64_t before, int limit,
                   archive_find_cb_t *cb, void *arg);

/*
 * The message seq of room, for an event on it that the recent log no
 * longer holds: found is 1 with its payload and a state record (see
 * store_event), 2 when it is deleted, 0 when MongoDB has no such message,
 * -1 when MongoDB failed. The texts belong to the archive until cb returns.
 */
typedef void archive_get_cb_t(void *arg, int found, const char *payload, const char *state);
int archive_get(archive_t *a, const char *room, int64_t seq, archive_get_cb_t *cb, void *arg);

/* The highest seq MongoDB holds for room (0 when none), or -1 on failure. */
typedef void archive_seq_cb_t(void *arg, int64_t seq);
int archive_max_seq(archive_t *a, const char *room, archive_seq_cb_t *cb, void *arg);

#endif
