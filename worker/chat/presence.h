/*
 * presence: who is in a room (kept in Redis across workers and hosts),
 * member join/leave events, and typing indicators: the ephemeral traffic
 * that carries no seq.
 */
#ifndef CHATD_PRESENCE_H
#define CHATD_PRESENCE_H

#include <stddef.h>

#include "../../proto/proto.h"
#include "room.h"

/* The presence and typing requests. */
void presence_request(conn_t *c, const proto_req_t *req);
void presence_typing(conn_t *c, const proto_req_t *req);

/* An ephemeral frame "<user>\n<frame>" (after the 'X' tag) for everyone in
 * r but user. */
void presence_relay(room_t *r, const char *msg, size_t len);

/* Redis came back (or lost our entries): every (room, user) this worker
 * holds is asserted again. */
void presence_reassert(chat_t *ch);

/* This worker gained its first / lost its last connection of user in r. */
void presence_member(chat_t *ch, room_t *r, const char *user, int joined);

#endif
