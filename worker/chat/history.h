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

/*
 * Answers a page of messages (history, or search results): texts are
 * payloads newest first; one more than limit means older ones exist
 * (more). The page lists them ascending, or newest first when
 * newest_first. q (NULL for none) goes in the payload as given.
 */
void history_send_page(conn_t *c, const char *id, const char *type, const char *room, const char *q,
                       char *const *texts, size_t n, size_t limit, int newest_first);

#endif
