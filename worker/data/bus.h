/*
 * bus: the worker's two Redis connections (hiredis async on the worker's
 * libuv loop), and the data wing's door. "cmd" carries commands and
 * scripts; "sub" is in pub/sub mode and carries the channels. Each
 * connection is closed, connecting or up; a lost one is reconnected with
 * backoff.
 *
 * The data wing (bus, store, archive) knows nothing of rooms: what Redis
 * says goes up through one table of handlers set once, before the loop
 * runs, by the layer above (bus_set_handlers): a channel message, a
 * subscription confirmed or ended, "sub" up or down (resubscribe), "cmd"
 * up (re-assert what Redis may have lost).
 */
#ifndef CHATD_BUS_H
#define CHATD_BUS_H

#include <stddef.h>

#include <hiredis/async.h>
#include <uv.h>

#include "../../common/config.h"
#include "../../common/metrics.h"

typedef struct bus_s bus_t;

typedef struct bus_handlers_s {
    void (*message)(void *ud, const char *channel, size_t clen, const char *msg, size_t len);
    /* subscribed is 1 for a confirmed subscribe, 0 for an unsubscribe. */
    void (*subscribed)(void *ud, const char *channel, size_t clen, int subscribed);
    void (*sub_up)(void *ud);
    void (*sub_down)(void *ud);
    void (*cmd_up)(void *ud);
} bus_handlers_t;

/* What the data wing's modules share, fixed at bus_new(). */
typedef struct bus_env_s {
    uv_loop_t *loop;
    const config_t *cfg;
    metrics_t *metrics;
    int slot;                   /* this worker's metrics slot */
    char wid[128];              /* this worker's id in Redis */
} bus_env_t;

/* The hiredis reply callback; reply is NULL when the command failed
 * because the connection went away. */
typedef void bus_cb_t(redisAsyncContext *ac, void *reply, void *privdata);

/* Creates the bus and starts connecting (nothing is reported before the
 * loop runs). env is copied. prev_wid names a dead predecessor whose Redis
 * entries are reaped once connected, or is "". Returns NULL on a bad
 * Redis URL (logged) or out of memory. */
bus_t *bus_new(const bus_env_t *env, const char *prev_wid);

/* Sets the handlers that receive what Redis reports; before the loop runs. */
void bus_set_handlers(bus_t *b, const bus_handlers_t *h, void *ud);

/* The shared environment given to bus_new(). */
const bus_env_t *bus_env(const bus_t *b);

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

/* The dead predecessor still to reap ("" when none). */
const char *bus_prev_wid(const bus_t *b);
void bus_forget_prev_wid(bus_t *b);

#endif
