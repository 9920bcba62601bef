/*
 * worker: one pre-forked process. It owns a fresh libuv loop, accepts from
 * the listening socket the master handed it, and holds all its state in
 * one worker_t: connections, rooms, the Redis bus. Nothing is shared with
 * other workers except through Redis and the master's metrics page.
 */
#ifndef CHATD_WORKER_H
#define CHATD_WORKER_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <uv.h>

#include "../common/config.h"
#include "../common/metrics.h"
#include "iplimit.h"

typedef struct conn_s conn_t;
typedef struct bus_s bus_t;
typedef struct room_s room_t;
typedef struct archive_s archive_t;

typedef struct worker_s {
    uv_loop_t loop;
    const config_t *cfg;
    int slot;
    pid_t master_pid;
    int ready_fd;               /* pipe to the master; -1 after "ready" */
    uv_tcp_t listener;
    uv_timer_t tick;
    uv_prepare_t flusher;
    uv_signal_t sig_term, sig_int, sig_quit, sig_usr1;
    conn_t *conns;
    size_t nconns;
    conn_t *dirty;              /* conns with output to flush */
    uint64_t next_session;
    int stopping;               /* 1 graceful, 2 now */
    uint64_t stop_deadline_ms;
    bus_t *bus;
    archive_t *archive;         /* NULL without --mongo-uri */
    room_t **rooms;             /* hash table of rooms with local members */
    size_t rooms_cap;
    size_t nrooms;
    iplimit_t per_ip;           /* connections per client address */
    conn_t *conn_pool;          /* free conn_t slots */
    void *conn_blocks;          /* the blocks they were carved from */
    size_t idle_released;       /* wslay contexts freed since the last trim */
    metrics_t *metrics;         /* shared page; this worker writes its slot */
    char wid[128];              /* this worker's id in Redis */
    char readbuf[64 * 1024];
} worker_t;

/*
 * Runs a worker until it is told to stop. listen_fd is the listening
 * socket; ready_fd gets one byte when the worker accepts. Returns the
 * process exit status.
 */
int worker_run(const config_t *cfg, int slot, int listen_fd, int ready_fd,
               metrics_t *metrics, const char *prev_wid);

/*
 * conn_t memory comes from per-worker blocks: thousands of long-lived
 * connections then sit densely on few pages instead of each pinning a page
 * among freed handshake and wslay buffers. Returns a zeroed conn or NULL.
 */
conn_t *worker_conn_alloc(worker_t *w);
void worker_conn_release(worker_t *w, conn_t *c);

/* Called by conn when a conn is freed (a stopping worker may exit). */
void worker_on_conn_freed(worker_t *w);

/* Serves a non-WebSocket GET path (the browser client, /metrics); returns 1
 * when it answered. */
int worker_serve_http(worker_t *w, conn_t *c, const char *path);

/* Counters: an upgrade (ok or refused), an error sent, messages. */
void worker_count_upgrade(worker_t *w, int ok);
void worker_count_error(worker_t *w, int code);

#endif
