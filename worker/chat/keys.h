/*
 * keys: what end-to-end encrypted rooms need of the server (protocol 1.1,
 * "End-to-end encrypted rooms"), which never sees a room key or a
 * plaintext: a directory of users' public keys (setkey, getkeys) and a
 * room-key mailbox (roomkey, getroomkeys). A wrapped room key is kept for
 * its receiver in the room's Redis slot and sent at once to each of the
 * receiver's connections, on any worker or host (inbox_send). The rule
 * that an e2e: room carries only ciphertext lives with the messages
 * (message.c).
 */
#ifndef CHATD_KEYS_H
#define CHATD_KEYS_H

#include "../../proto/proto.h"
#include "../net/conn.h"

void keys_set(conn_t *c, const proto_req_t *req);
void keys_get(conn_t *c, const proto_req_t *req);
void keys_room_key(conn_t *c, const proto_req_t *req);
void keys_room_keys(conn_t *c, const proto_req_t *req);

#endif
