/*
 * unread: what a user has read. Read cursors (per user and room, shared
 * by every device, only ever moving forward), the receipts that announce
 * a moved cursor, unread counts in joined, and the rooms request: the
 * user's rooms with their unread counts, newest activity first.
 */
#ifndef CHATD_UNREAD_H
#define CHATD_UNREAD_H

#include "../../proto/proto.h"
#include "room.h"

/* A new membership m waits for the user's read state of its room; once it
 * is known (and the room is), m starts. The room goes into the user's
 * index of rooms. */
void unread_join(chat_t *ch, member_t *m);

/* A join of a room c is already a member of: answers joined with the
 * member's seq and the current read state. */
void unread_rejoined(conn_t *c, const char *id, member_t *m);

/* The read and rooms requests. */
void unread_read(conn_t *c, const proto_req_t *req);
void unread_rooms(conn_t *c, const proto_req_t *req);

#endif
