/*
 * history: pages of a room's past, newest first from the recent log in
 * Redis, continued from the MongoDB archive below what the log holds.
 */
#ifndef CHATD_HISTORY_H
#define CHATD_HISTORY_H

#include "../../proto/proto.h"
#include "../net/conn.h"

/* The history request. */
void history_request(conn_t *c, const proto_req_t *req);

#endif
