/*
 * bus: the worker's links to Redis (hiredis async on the worker's libuv
 * loop), and the data wing's door. Against one Redis (--redis-url) there
 * is one node; against Redis Cluster (--redis-cluster) there is one node
 * per master, found from the seeds with CLUSTER SLOTS. Each node has a
 * command connection ("cmd", hiredis async) and a subscriber connection
 * ("sub", pubsub.h), and with --ack-replicas a durable link ("dur") that
 * carries the sends and their WAITs; each is closed, connecting or up, and
 * a lost one is redialled with backoff.
 *
 * Commands are routed by the hash slot of the key they name. In a cluster
 * a command answered MOVED is sent again where the slot now lives (and the
 * map refreshed); ASK sends it once to the importing node after ASKING;
 * TRYAGAIN (a slot halfway through moving) retries shortly. Room channels
 * use sharded pub/sub there (SSUBSCRIBE on the slot's node, SPUBLISH).
 *
 * The data wing (bus, store, archive) knows nothing of rooms: what Redis
 * says goes up through one table of handlers set once, before the loop
 * runs, by the layer above (bus_set_handlers): a channel message, a
 * subscription confirmed or ended, a subscriber link up or down
 * (resubscribe), a command link up (re-assert what Redis may have lost).
 */
#ifndef CHATD_BUS_H
#define CHATD_BUS_H

#include <stddef.h>

#include <hiredis/async.h>
#include <uv.h>

#include "../../common/buf.h"
#include "../../common/config.h"
#include "../../common/metrics.h"

typedef struct bus_s bus_t;

typedef struct bus_handlers_s {
    void (*message)(void *ud, const char *channel, size_t clen, const char *msg, size_t len);
    /* subscribed is 1 for a confirmed subscribe, 0 when a subscription
     * ended (asked for, or ended by Redis). */
    void (*subscribed)(void *ud, const char *channel, size_t clen, int subscribed);
    /* A subscriber link came up: subscribe what is not subscribed. */
    void (*sub_up)(void *ud);
    /* A subscriber link went down: every subscription may be gone. */
    void (*sub_down)(void *ud);
    /* A command link came up: re-assert what Redis may have lost. */
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
 * Redis URL or seed list (logged) or out of memory. */
bus_t *bus_new(const bus_env_t *env, const char *prev_wid);

/* Sets the handlers that receive what Redis reports; before the loop runs. */
void bus_set_handlers(bus_t *b, const bus_handlers_t *h, void *ud);

/* The shared environment given to bus_new(). */
const bus_env_t *bus_env(const bus_t *b);

/* 1 against Redis Cluster. */
int bus_is_cluster(const bus_t *b);

/* Starts closing every connection; pending callbacks still run. */
void bus_close(bus_t *b);

/* Frees the bus after the loop has run out. */
void bus_free(bus_t *b);

/* 1 when every node serving slots has both links up, Redis answered
 * recently, and (in a cluster) every slot has a node. */
int bus_healthy(const bus_t *b);

/* 1 when the node serving key's slot has both links up. */
int bus_ready(const bus_t *b, const char *key, size_t len);

/* Appends one line per node ("redis HOST:PORT cmd=up sub=up") to out. */
int bus_describe(const bus_t *b, buf_t *out);

/* Once a second: health checks, redials, map refresh, store upkeep. */
void bus_tick(bus_t *b);

/*
 * Sends a command to the node serving key (keylen bytes). Returns 0 when
 * sent (cb runs exactly once, with NULL if the connection is lost or the
 * command could not be delivered), or -1 when that node is unavailable
 * (cb never runs). cb may be NULL. argv is copied when it may have to be
 * sent again (in a cluster).
 */
int bus_command(bus_t *b, const char *key, size_t keylen, bus_cb_t *cb, void *privdata,
                int argc, const char **argv, const size_t *argvlen);

/* The same on the node's durable link (with --ack-replicas; else the
 * command link): for writes whose WAIT must not hold up other commands. */
int bus_command_durable(bus_t *b, const char *key, size_t keylen, bus_cb_t *cb, void *privdata,
                        int argc, const char **argv, const size_t *argvlen);

/* Sends a command on the link ac (as given to a reply callback): the
 * same node and connection. Returns 0 when sent, or -1. */
int bus_command_node(bus_t *b, redisAsyncContext *ac, bus_cb_t *cb, void *privdata,
                     int argc, const char **argv, const size_t *argvlen);

/*
 * Durability: call from inside a reply callback of the command link ac.
 * Once every write sent on that link so far is held by at least n replicas
 * (WAIT n timeout_ms, one WAIT per node and loop iteration however many
 * callers ask), cb gets ok = 1; after the timeout or a lost link, ok = 0.
 * Returns 0, or -1 when out of memory (cb never runs).
 */
typedef void bus_wait_cb_t(void *arg, int ok);
int bus_wait(bus_t *b, redisAsyncContext *ac, int n, int timeout_ms, bus_wait_cb_t *cb, void *arg);

/* Subscribes or unsubscribes a channel on the node serving it. Returns 0
 * or -1 (that node's subscriber link is not up). */
int bus_subscribe(bus_t *b, const char *channel, size_t len);
int bus_unsubscribe(bus_t *b, const char *channel, size_t len);

/* The publish verb for room channels: "PUBLISH", or "SPUBLISH" in a cluster. */
const char *bus_publish_verb(const bus_t *b);

/* The dead predecessor still to reap ("" when none). */
const char *bus_prev_wid(const bus_t *b);
void bus_forget_prev_wid(bus_t *b);

#endif
