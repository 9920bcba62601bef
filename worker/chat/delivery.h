/*
 * delivery: the order promise of a room on this worker. Messages arrive
 * from pub/sub tagged with their seq; a room delivers seq N only after
 * N-1, fetching any gap from the store, so every local member sees the
 * room in seq order exactly once. A joining member gets "joined", then
 * what it missed since its "since" (replayed from the store while live
 * frames are held back), then live traffic. Each frame is encoded once and
 * queued to every member.
 */
#ifndef CHATD_DELIVERY_H
#define CHATD_DELIVERY_H

#include <stddef.h>

#include "room.h"

/* A published event for r, after its tag: "<seq> <ts_us> <payload>" for a
 * chat ('C'), "<seq> <ts_us> <type> <payload>" for the others ('E'). */
void delivery_on_published(chat_t *ch, room_t *r, int event, const char *msg, size_t len);

/* r's subscription is live: learn where the room stands (first time) or
 * fetch what was published while it was not, and start waiting members. */
void delivery_sync(chat_t *ch, room_t *r);

/* Once a second for a subscribed room with members: a read of its last
 * seq or of a gap that failed (a link lost mid-call) is tried again, so
 * neither waiting joins nor frames behind the gap stay stuck. */
void delivery_retry(chat_t *ch, room_t *r);

/* The room's last seq is known: m gets joined, its replay, then live
 * traffic. */
void delivery_start_member(chat_t *ch, member_t *m);

/* Frees what m keeps while joining (held frames included). */
void delivery_end_join(member_t *m);

/* Frees a list of frames. */
void delivery_free_frames(frame_t *f);

#endif
