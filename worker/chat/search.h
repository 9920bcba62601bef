/*
 * search: a room's messages that hold every word of a query (words.h),
 * newest first: the recent log in Redis is read the way history reads it,
 * message states folded in, and matched here; below it, the MongoDB
 * archive answers from its indexed words. Deleted messages and end-to-end
 * encrypted rooms never match.
 */
#ifndef CHATD_SEARCH_H
#define CHATD_SEARCH_H

#include "../../proto/proto.h"
#include "../net/conn.h"

/* The search request. */
void search_request(conn_t *c, const proto_req_t *req);

#endif
