/*
 * pubsub: one subscriber connection to one Redis node, on the worker's
 * libuv loop. hiredis 0.14's async API cannot carry sharded pub/sub (it
 * treats "smessage" pushes as replies to whatever command is pending), so
 * this connection is a plain uv_tcp_t whose bytes go through hiredis's
 * RESP reader, and whose commands are formatted by hiredis.
 *
 * It speaks classic (SUBSCRIBE, "message") or sharded (SSUBSCRIBE,
 * "smessage") pub/sub, chosen at connect. Every subscribe or unsubscribe
 * is answered through the handlers: confirmed, ended (also when Redis ends
 * it on its own, as Cluster does when a slot moves away), or refused with
 * Redis's error text (a MOVED redirection, say).
 *
 * Lifecycle: pubsub_connect() -> up() (at connect, as hiredis reports its
 * links) -> ... -> down() once, after which
 * the object frees itself; or pubsub_close() by the owner, after which no
 * handler runs.
 */
#ifndef CHATD_PUBSUB_H
#define CHATD_PUBSUB_H

#include <stddef.h>

#include <uv.h>

typedef struct pubsub_s pubsub_t;

typedef struct pubsub_handlers_s {
    void (*up)(void *ud);
    /* The connection failed or was lost; ps is being freed. */
    void (*down)(void *ud, const char *why);
    void (*message)(void *ud, const char *channel, size_t clen, const char *msg, size_t len);
    /* on: 1 subscribed, 0 unsubscribed. */
    void (*subscribed)(void *ud, const char *channel, size_t clen, int on);
    /* A subscribe or unsubscribe of channel was refused with err. */
    void (*refused)(void *ud, const char *channel, size_t clen, const char *err, size_t elen);
} pubsub_handlers_t;

/* Starts connecting to host:port (a name or an address). password may be
 * "" (no AUTH). h must outlive the connection. Returns NULL when out of
 * memory or when the dial cannot even start (nothing is reported then). */
pubsub_t *pubsub_connect(uv_loop_t *loop, const char *host, int port, const char *password,
                         int sharded, const pubsub_handlers_t *h, void *ud);

/* Subscribes (on = 1) or unsubscribes (on = 0) one channel. Returns 0 when
 * sent, -1 when the connection is not up or out of memory. */
int pubsub_subscribe(pubsub_t *ps, const char *channel, size_t len, int on);

/* Closes the connection and frees it once libuv lets go; no handler runs
 * after this call. */
void pubsub_close(pubsub_t *ps);

#endif
