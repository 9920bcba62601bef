/*
 * calls: WebRTC call signalling (protocol 1.1, "Calls"). A signal (offer,
 * answer, ICE candidate, hangup, reject, busy) goes to every connection
 * of its receiver, on any worker or host, through the receiver's user
 * channel; it is neither stored nor numbered, and the server never
 * touches media. The sender learns `not_found` when the receiver has no
 * connection anywhere: the publish reaches no worker.
 */
#ifndef CHATD_CALLS_H
#define CHATD_CALLS_H

#include "../../proto/proto.h"
#include "../net/conn.h"

void calls_signal(conn_t *c, const proto_req_t *req);

#endif
