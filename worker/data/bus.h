/*
 * bus: the worker's two Redis connections (hiredis async on the worker's
 * libuv loop). "cmd" carries commands and scripts; "sub" is in pub/sub
 * mode and carries the rooms' channels. Each connection is closed,
 * connecting or up; a lost one is reconnected with backoff, and when
 * "sub" comes back every room is resubscribed (room_on_bus_up()).
 */
#ifndef CHATD_BUS_H
#define CHATD_BUS_H

#include <stddef.h>

#include <hiredis/async.h>

typedef struct worker_s worker_t;
typedef struct bus_s bus_t;

/* The hiredis reply callback; reply is NULL when the command failed
 * because the connection went away. */
typedef void bus_cb_t(redisAsyncContext *ac, void *reply, void *privdata);

/* Creates the bus and starts connecting. prev_wid names a dead
 * predecessor whose Redis entries are reaped once connected, or is "". */
bus_t *bus_new(worker_t *w, const char *prev_wid);

/* Starts closing both connections; pending callbacks still run. */
void bus_close(bus_t *b);

/* Frees the bus after the loop has run out. */
void bus_free(bus_t *b);

/* 1 when both connections are up and Redis answered recently. */
int bus_healthy(const bus_t *b);

/* Once a second: health checks, worker heartbeat, reaping. */
void bus_tick(bus_t *b);

/*
 * Sends a command on "cmd". Returns 0 when sent (cb runs exactly once,
 * with NULL if the connection is lost), or -1 when Redis is unavailable
 * (cb never runs). cb may be NULL.
 */
int bus_command(bus_t *b, bus_cb_t *cb, void *privdata, int argc, const char **argv,
                const size_t *argvlen);

/* Subscribes or unsubscribes a channel on "sub". Returns 0 or -1. */
int bus_subscribe(bus_t *b, const char *channel, size_t len);
int bus_unsubscribe(bus_t *b, const char *channel, size_t len);

/* The worker that owns the bus. */
worker_t *bus_worker(const redisAsyncContext *ac);

/* The dead predecessor still to reap ("" when none). */
const char *bus_prev_wid(const bus_t *b);
void bus_forget_prev_wid(bus_t *b);

#endif
