#include "worker.h"
#include "conn.h"
#include "archive.h"
#include "bus.h"
#include "room.h"
#include "web.h"
#include "../common/log.h"
#include "../proto/proto.h"

#include <errno.h>
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

/* How many clients a retiring worker closes per step, and how often: a
 * worker with 20,000 clients must not send them all to its siblings at once. */
#define WORKER_CLOSE_BATCH 500
#define WORKER_CLOSE_STEP_MS 50

static void worker_on_handle_closed(uv_handle_t *h)
{
    (void)h;
}

static void worker_close_handle(uv_handle_t *h)
{
    if (!uv_is_closing(h)) {
        uv_close(h, worker_on_handle_closed);
    }
}

static void worker_finish(worker_t *w)
{
    /* Everything still open is closed; the loop then runs out and
     * worker_run returns. */
    for (conn_t *c = w->conns; c != NULL; c = c->next) {
        conn_abort(c);
    }
    bus_close(w->bus);
    archive_close(w->archive);
    worker_close_handle((uv_handle_t *)&w->listener);
    worker_close_handle((uv_handle_t *)&w->tick);
    worker_close_handle((uv_handle_t *)&w->flusher);
    worker_close_handle((uv_handle_t *)&w->sig_term);
    worker_close_handle((uv_handle_t *)&w->sig_int);
    worker_close_handle((uv_handle_t *)&w->sig_quit);
    worker_close_handle((uv_handle_t *)&w->sig_usr1);
}

#define WORKER_CONN_BLOCK 64

typedef struct conn_block_s {
    struct conn_block_s *next;
    conn_t conns[WORKER_CONN_BLOCK];
} conn_block_t;

conn_t *worker_conn_alloc(worker_t *w)
{
    if (w->conn_pool == NULL) {
        conn_block_t *b = malloc(sizeof(*b));
        if (b == NULL) {
            return NULL;
        }
        b->next = w->conn_blocks;
        w->conn_blocks = b;
        for (int i = 0; i < WORKER_CONN_BLOCK; i++) {
            b->conns[i].next = w->conn_pool;
            w->conn_pool = &b->conns[i];
        }
    }
    conn_t *c = w->conn_pool;
    w->conn_pool = c->next;
    memset(c, 0, sizeof(*c));
    return c;
}

void worker_conn_release(worker_t *w, conn_t *c)
{
    c->next = w->conn_pool;
    w->conn_pool = c;
}

static void worker_free_conn_blocks(worker_t *w)
{
    conn_block_t *b = w->conn_blocks;
    while (b != NULL) {
        conn_block_t *next = b->next;
        free(b);
        b = next;
    }
    w->conn_blocks = NULL;
    w->conn_pool = NULL;
}

void worker_on_conn_freed(worker_t *w)
{
    if (w->stopping == 1 && w->nconns == 0) {
        log_info("event=worker_drained slot=%d", w->slot);
        worker_finish(w);
    }
}

static void worker_stop_graceful(worker_t *w)
{
    if (w->stopping) {
        return;
    }
    w->stopping = 1;
    w->stop_deadline_ms = uv_now(&w->loop) + (uint64_t)w->cfg->shutdown_timeout * 1000;
    log_info("event=worker_graceful_stop slot=%d connections=%zu", w->slot, w->nconns);
    /* New connections go to the other workers (or the new master). */
    worker_close_handle((uv_handle_t *)&w->listener);
    if (w->nconns == 0) {
        worker_finish(w);
    }
}

static void worker_on_signal(uv_signal_t *s, int signum)
{
    worker_t *w = s->data;
    switch (signum) {
    case SIGTERM:
    case SIGINT:
        if (w->stopping != 2) {
            w->stopping = 2;
            worker_finish(w);
        }
        break;
    case SIGQUIT:
        worker_stop_graceful(w);
        break;
    case SIGUSR1:
        if (log_reopen() != 0) {
            log_error("event=log_reopen_failed err=\"%s\"", strerror(errno));
        }
        break;
    default:
        break;
    }
}

static void worker_on_tick(uv_timer_t *t)
{
    worker_t *w = t->data;
    uint64_t now = uv_now(&w->loop);
    if (getppid() != w->master_pid && w->stopping != 2) {
        log_warn("event=master_gone slot=%d", w->slot);
        w->stopping = 2;
        worker_finish(w);
        return;
    }
    if (w->stopping == 1) {
        /* Retire clients in batches, so they reconnect to siblings gradually.
         * A handshake under way completes first (or times out): cutting it
         * would look like a failed connection to the client. */
        int n = 0;
        for (conn_t *c = w->conns; c != NULL && n < WORKER_CLOSE_BATCH; c = c->next) {
            if (c->state == CONN_WS) {
                conn_close(c, 1001, "server going away");
                n++;
            }
        }
        if (now >= w->stop_deadline_ms) {
            log_warn("event=graceful_stop_timeout slot=%d left=%zu", w->slot, w->nconns);
            w->stopping = 2;
            worker_finish(w);
            return;
        }
    }
    conn_t *next;
    for (conn_t *c = w->conns; c != NULL; c = next) {
        next = c->next;
        conn_tick(c, now);
    }
    bus_tick(w->bus);
    archive_tick(w->archive);
    room_tick(w);
    /* Idle connections just gave their wslay state back; return those
     * pages to the kernel so that RSS follows the live set. */
    if (w->idle_released >= 64) {
        malloc_trim(0);
        w->idle_released = 0;
    }
    metrics_set(&w->metrics->slot[w->slot].rooms, w->nrooms);
}

static void worker_on_prepare(uv_prepare_t *p)
{
    worker_t *w = p->data;
    /* All output made during this loop iteration leaves in one write per
     * connection, before the loop blocks again. */
    while (w->dirty != NULL) {
        conn_t *c = w->dirty;
        w->dirty = c->dirty_next;
        c->dirty = 0;
        c->dirty_next = NULL;
        conn_flush(c);
    }
}

static void worker_on_connection(uv_stream_t *listener, int status)
{
    worker_t *w = listener->data;
    if (status < 0) {
        log_error("event=accept_failed err=\"%s\"", uv_strerror(status));
        return;
    }
    int rc = conn_accept(w, listener);
    if (rc != 0 && rc != UV_EAGAIN) {
        /* EMFILE and friends: the connection stays in the backlog or is
         * dropped by the kernel; existing clients are unaffected. */
        log_warn("event=accept_failed err=\"%s\"", uv_strerror(rc));
    }
}

static int worker_start_signal(worker_t *w, uv_signal_t *s, int signum)
{
    int rc = uv_signal_init(&w->loop, s);
    if (rc == 0) {
        s->data = w;
        rc = uv_signal_start(s, worker_on_signal, signum);
        uv_unref((uv_handle_t *)s);
    }
    return rc;
}

void worker_count_upgrade(worker_t *w, int ok)
{
    metrics_slot_t *s = &w->metrics->slot[w->slot];
    metrics_add(ok ? &s->upgrades : &s->upgrades_refused, 1);
}

void worker_count_error(worker_t *w, int code)
{
    if (code >= 0 && code < METRICS_ERRORS) {
        metrics_add(&w->metrics->slot[w->slot].errors[code], 1);
    }
}

int worker_serve_http(worker_t *w, conn_t *c, const char *path)
{
    if (strcmp(path, "/metrics") == 0) {
        const char *names[METRICS_ERRORS] = { 0 };
        for (int e = 1; e < PROTO_E_COUNT; e++) {
            names[e] = proto_err_name((proto_err_t)e);
        }
        names[PROTO_E_COUNT] = "slow_consumer";
        buf_t body = { 0 };
        if (metrics_render(w->metrics, names, METRICS_ERRORS, &body) != 0) {
            buf_free(&body);
            conn_http_reply(c, 500, "text/plain", NULL, "internal\n", 9);
            return 1;
        }
        conn_http_reply(c, 200, "text/plain; version=0.0.4", "Cache-Control: no-store\r\n",
                        body.data, body.len);
        buf_free(&body);
        return 1;
    }
    return web_serve(c, path);
}

int worker_run(const config_t *cfg, int slot, int listen_fd, int ready_fd,
               metrics_t *metrics, const char *prev_wid)
{
    worker_t *w = calloc(1, sizeof(*w));
    if (w == NULL) {
        log_error("event=worker_start_failed err=\"out of memory\"");
        return 1;
    }
    int status = 1;
    w->cfg = cfg;
    w->slot = slot;
    w->master_pid = getppid();
    w->ready_fd = ready_fd;
    w->metrics = metrics;
    char host[64];
    if (gethostname(host, sizeof(host)) == -1) {
        snprintf(host, sizeof(host), "localhost");
    }
    host[sizeof(host) - 1] = '\0';
    snprintf(w->wid, sizeof(w->wid), "%s:%d:%d", host, (int)w->master_pid, (int)getpid());

    /* The worker dies with the master rather than serving on alone. */
    if (prctl(PR_SET_PDEATHSIG, SIGTERM) == -1) {
        log_warn("event=prctl_failed err=\"%s\"", strerror(errno));
    }

    int rc = uv_loop_init(&w->loop);
    if (rc != 0) {
        log_error("event=worker_start_failed call=uv_loop_init err=\"%s\"", uv_strerror(rc));
        free(w);
        return 1;
    }
    w->listener.data = w;
    w->tick.data = w;
    w->flusher.data = w;
    if ((rc = uv_tcp_init(&w->loop, &w->listener)) != 0 ||
        (rc = uv_tcp_open(&w->listener, listen_fd)) != 0 ||
        (rc = uv_listen((uv_stream_t *)&w->listener, 4096, worker_on_connection)) != 0 ||
        (rc = uv_timer_init(&w->loop, &w->tick)) != 0 ||
        (rc = uv_timer_start(&w->tick, worker_on_tick, 1000, 1000)) != 0 ||
        (rc = uv_prepare_init(&w->loop, &w->flusher)) != 0 ||
        (rc = uv_prepare_start(&w->flusher, worker_on_prepare)) != 0 ||
        (rc = worker_start_signal(w, &w->sig_term, SIGTERM)) != 0 ||
        (rc = worker_start_signal(w, &w->sig_int, SIGINT)) != 0 ||
        (rc = worker_start_signal(w, &w->sig_quit, SIGQUIT)) != 0 ||
        (rc = worker_start_signal(w, &w->sig_usr1, SIGUSR1)) != 0) {
        log_error("event=worker_start_failed err=\"%s\"", uv_strerror(rc));
        goto done;
    }
    uv_unref((uv_handle_t *)&w->flusher);

    w->bus = bus_new(w, prev_wid);
    if (w->bus == NULL) {
        log_error("event=worker_start_failed err=\"cannot create the Redis bus\"");
        goto done;
    }

    if (cfg->mongo_uri[0] != '\0') {
        w->archive = archive_new(w);
        if (w->archive == NULL) {
            log_error("event=worker_start_failed err=\"cannot set up the MongoDB archive\"");
            goto done;
        }
    }

    metrics_slot_t *ms = &metrics->slot[slot];
    __atomic_store_n(&ms->pid, (int32_t)getpid(), __ATOMIC_RELAXED);
    int one = slot;
    if (write(ready_fd, &one, sizeof(one)) == -1) {
        log_warn("event=ready_write_failed err=\"%s\"", strerror(errno));
    }
    close(ready_fd);
    w->ready_fd = -1;
    log_info("event=worker_started slot=%d wid=%s", slot, w->wid);

    /* The browser client's files, read once before the loop so that
     * serving them never touches the disk. */
    (void)web_load(NULL);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    status = 0;

done:
    if (!w->stopping) {
        worker_finish(w);
    }
    /* Let every close callback run so that nothing is left allocated. */
    uv_run(&w->loop, UV_RUN_DEFAULT);
    bus_free(w->bus);
    archive_free(w->archive);
    room_free_all(w);
    worker_free_conn_blocks(w);
    iplimit_free(&w->per_ip);
    web_unload();
    if (uv_loop_close(&w->loop) != 0) {
        log_warn("event=loop_close_busy slot=%d", slot);
    }
    if (__atomic_load_n(&metrics->slot[slot].pid, __ATOMIC_RELAXED) == getpid()) {
        metrics_set(&metrics->slot[slot].connections, 0);
    }
    log_info("event=worker_exit slot=%d", slot);
    free(w);
    return status;
}
