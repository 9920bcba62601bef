/*
 * message: accepting a chat message: one atomic store step (dedup, seq,
 * log, publish), seeding a room's counter from the archive when Redis lost
 * it, and the ack once the message is durable.
 */
#ifndef CHATD_MESSAGE_H
#define CHATD_MESSAGE_H

#include "../../proto/proto.h"
#include "../net/conn.h"

/* The chat request. */
void message_chat(conn_t *c, const proto_req_t *req);

/* The edit, delete and react requests: room events on a message, stored
 * and acked like a chat (the target is checked in the same store step). */
void message_event(conn_t *c, const proto_req_t *req);

#endif
