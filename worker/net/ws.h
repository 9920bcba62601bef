/*
 * ws: the WebSocket layer of a conn, over wslay's event API. wslay parses
 * and frames; this module feeds it bytes, collects its output into the
 * conn's buffer, and enforces the contract's frame rules (text only, valid
 * UTF-8, the size limit) before a message reaches the session.
 */
#ifndef CHATD_WS_H
#define CHATD_WS_H

#include <stddef.h>
#include <stdint.h>

#include "wsframe.h"

typedef struct conn_s conn_t;

/* Creates the wslay context of c. Returns 0 or -1. */
int ws_start(conn_t *c);

/* Releases the context. */
void ws_stop(conn_t *c);

/*
 * Frees the wslay context of an idle connection: between frames, no
 * message half-received, nothing queued. A wslay context is ~9 KiB, most
 * of a connection's memory; it is made again on the next byte either way.
 */
void ws_release_if_idle(conn_t *c);

/* Processes bytes read from the socket. Complete text messages go up
 * through the net handlers' text(). */
void ws_feed(conn_t *c, const uint8_t *data, size_t len);

/*
 * Queues a reference to a text frame. Closes c with 1013 when its outgoing
 * queue would exceed the configured bound. Returns 0, or -1 when the frame
 * was not queued.
 */
int ws_send_frame(conn_t *c, wsframe_t *f);

/* Queues a ping frame. */
void ws_ping(conn_t *c);

/* Queues a close frame with code and reason. */
void ws_close(conn_t *c, uint16_t code, const char *reason);

/* Moves wslay's queued control frames into c's output queue. */
void ws_drain(conn_t *c);

/* Bytes wslay holds that are not yet in c->out. */
size_t ws_queued_bytes(const conn_t *c);

/* 1 when the close handshake is over (or wslay stopped). */
int ws_finished(const conn_t *c);

#endif
