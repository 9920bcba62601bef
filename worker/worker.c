#include "worker.h"
#include "chat/chat.h"
#include "data/archive.h"
#include "data/filestore.h"
#include "chat/files.h"
#include "data/bus.h"
#include "net/conn.h"
#include "net/net.h"
#include "net/web.h"
#include "../common/log.h"
#include "../proto/proto.h"

#include <errno.h>
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
/* A new worker takes connections once its Redis links are up (every
 * master's, in a cluster), or after this long if they are not: clients
 * the kernel hands it meanwhile wait in the backlog instead of meeting a
 * worker that can only answer "unavailable". */
#define WORKER_STORE_WAIT_MS 1000
#define WORKER_STORE_POLL_MS 2

typedef struct worker_s {
    uv_loop_t loop;
    const config_t *cfg;
    int slot;
    pid_t master_pid;
    int ready_fd;               /* pipe to the master; -1 after "ready" */
    uv_tcp_t listener;          /* --port */
    uv_tcp_t tls_listener;      /* --tls-port, when open_tls */
    int listener_tls;           /* listener speaks TLS (no --tls-port) */
    int open_tls;
    uv_timer_t store_wait;      /* until the listeners start */
    uint64_t store_wait_until_ms;
    uv_timer_t tick;
    uv_prepare_t flusher;
    uv_timer_t flush_timer;     /* wakes the loop when a delayed flush is due */
    uint64_t last_flush_ms;
    uv_signal_t sig_term, sig_int, sig_quit, sig_usr1, sig_hup;
    int stopping;               /* 1 graceful, 2 now */
    uint64_t stop_deadline_ms;
    metrics_t *metrics;         /* shared page; this worker writes its slot */
    bus_t *bus;                 /* the data wing */
    archive_t *archive;         /* NULL without --mongo-uri */
    filestore_t *filestore;     /* GridFS or --files-dir; NULL if neither works */
    files_t files;              /* the chat wing's HTTP side */
    chat_t chat;                /* the chat wing */
    net_t net;                  /* the net wing (last: it holds the read buffer) */
} worker_t;

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
    net_abort_all(&w->net);
    bus_close(w->bus);
    archive_close(w->archive);
    worker_close_handle((uv_handle_t *)&w->listener);
    if (w->open_tls) {
        worker_close_handle((uv_handle_t *)&w->tls_listener);
    }
    worker_close_handle((uv_handle_t *)&w->store_wait);
    worker_close_handle((uv_handle_t *)&w->tick);
    worker_close_handle((uv_handle_t *)&w->flusher);
    worker_close_handle((uv_handle_t *)&w->flush_timer);
    worker_close_handle((uv_handle_t *)&w->sig_term);
    worker_close_handle((uv_handle_t *)&w->sig_int);
    worker_close_handle((uv_handle_t *)&w->sig_quit);
    worker_close_handle((uv_handle_t *)&w->sig_usr1);
    worker_close_handle((uv_handle_t *)&w->sig_hup);
}

/* A conn's memory went back: a draining worker may be done. */
static void worker_on_conn_freed(void *ud)
{
    worker_t *w = ud;
    if (w->stopping == 1 && w->net.nconns == 0) {
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
    log_info("event=worker_graceful_stop slot=%d connections=%zu", w->slot, w->net.nconns);
    /* New connections go to the other workers (or the new master). */
    worker_close_handle((uv_handle_t *)&w->listener);
    if (w->open_tls) {
        worker_close_handle((uv_handle_t *)&w->tls_listener);
    }
    if (w->net.nconns == 0) {
        worker_finish(w);
    }
}

/*
 * The master's certificate-only reload: new handshakes get the files'
 * current certificate, connections stay. The master checked the files
 * just before; should they have changed for the worse since, the old
 * certificate stays here too.
 */
static void worker_tls_reload(worker_t *w)
{
    if (w->cfg->tls_cert[0] == '\0') {
        return;
    }
    char err[512];
    tls_pem_t pem;
    if (tls_pem_load(&pem, w->cfg->tls_cert, w->cfg->tls_key, err, sizeof(err)) != 0) {
        log_error("event=tls_reload_failed slot=%d err=\"%s\" keeping=old", w->slot, err);
        return;
    }
    if (net_tls_use(&w->net, &pem, err, sizeof(err)) != 0) {
        log_error("event=tls_reload_failed slot=%d err=\"%s\" keeping=old", w->slot, err);
    } else {
        log_info("event=tls_reloaded slot=%d", w->slot);
    }
    tls_pem_free(&pem);
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
    case SIGHUP:
        worker_tls_reload(w);
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
        /* Retire clients in batches, so they reconnect to siblings gradually. */
        net_close_some(&w->net, WORKER_CLOSE_BATCH);
        if (now >= w->stop_deadline_ms) {
            log_warn("event=graceful_stop_timeout slot=%d left=%zu", w->slot, w->net.nconns);
            w->stopping = 2;
            worker_finish(w);
            return;
        }
    }
    net_tick(&w->net, now);
    bus_tick(w->bus);
    archive_tick(w->archive);
    filestore_tick(w->filestore);
    chat_tick(&w->chat);
}

static void worker_on_connection(uv_stream_t *listener, int status);

static void worker_on_store_wait(uv_timer_t *t)
{
    worker_t *w = t->data;
    if (w->stopping) {
        uv_timer_stop(t);
        return;
    }
    if (!bus_healthy(w->bus) && uv_now(&w->loop) < w->store_wait_until_ms) {
        return;
    }
    uv_timer_stop(t);
    int rc = uv_listen((uv_stream_t *)&w->listener, 4096, worker_on_connection);
    if (rc == 0 && w->open_tls) {
        rc = uv_listen((uv_stream_t *)&w->tls_listener, 4096, worker_on_connection);
    }
    if (rc != 0) {
        log_error("event=worker_listen_failed call=uv_listen err=\"%s\"", uv_strerror(rc));
        w->stopping = 2;
        worker_finish(w);
    }
}

static void worker_on_flush_due(uv_timer_t *t)
{
    /* Nothing to do here: the loop's next prepare phase flushes. */
    (void)t;
}

static void worker_on_prepare(uv_prepare_t *p)
{
    worker_t *w = p->data;
    uint64_t delay = (uint64_t)w->cfg->write_delay;
    if (delay == 0 || w->net.dirty == NULL) {
        net_flush(&w->net);
        return;
    }
    /* With --write-delay, output made during the next few iterations joins
     * what is queued, so each connection gets fewer, larger writes. */
    uint64_t now = uv_now(&w->loop);
    if (now - w->last_flush_ms >= delay) {
        net_flush(&w->net);
        w->last_flush_ms = now;
    } else if (!uv_is_active((uv_handle_t *)&w->flush_timer)) {
        uv_timer_start(&w->flush_timer, worker_on_flush_due, w->last_flush_ms + delay - now, 0);
    }
}

static void worker_on_connection(uv_stream_t *listener, int status)
{
    worker_t *w = listener->data;
    if (status < 0) {
        log_error("event=accept_failed err=\"%s\"", uv_strerror(status));
        return;
    }
    int tls = listener == (uv_stream_t *)&w->tls_listener || w->listener_tls;
    int rc = net_accept(&w->net, listener, tls);
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

/* The server's own pages: /healthz (Redis reachable) and /metrics. */
static int worker_serve_http(void *ud, conn_t *c, const char *path, const char *query)
{
    worker_t *w = ud;
    if (files_http(&w->files, c, path, query)) {
        return 1;
    }
    const http_req_t *req = conn_request(c);
    if (req == NULL || (req->method != HTTP_GET && req->method != HTTP_HEAD)) {
        return 0;
    }
    if (strcmp(path, "/healthz") == 0) {
        /* The first line says it all; one line per Redis node follows. */
        int ok = bus_healthy(w->bus);
        buf_t body = { 0 };
        const char *head = ok ? "ok\n" : "redis unavailable\n";
        if (buf_append(&body, head, strlen(head)) != 0 || bus_describe(w->bus, &body) != 0) {
            buf_free(&body);
            conn_http_reply(c, 500, "text/plain", NULL, "internal\n", 9);
            return 1;
        }
        conn_http_reply(c, ok ? 200 : 503, "text/plain", "Cache-Control: no-store\r\n", body.data, body.len);
        buf_free(&body);
        return 1;
    }
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
    return 0;
}

static const net_hooks_t worker_net_hooks = {
    .http = worker_serve_http,
    .freed = worker_on_conn_freed,
};

int worker_run(const config_t *cfg, int slot, int listen_fd, int tls_fd, const tls_pem_t *pem,
               int ready_fd, metrics_t *metrics, const char *prev_wid)
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
    char wid[128];
    snprintf(wid, sizeof(wid), "%s:%d:%d", host, (int)w->master_pid, (int)getpid());

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
    w->tls_listener.data = w;
    w->listener_tls = pem != NULL && tls_fd == -1;
    w->store_wait.data = w;
    w->tick.data = w;
    w->flusher.data = w;
    if ((rc = uv_tcp_init(&w->loop, &w->listener)) != 0 ||
        (rc = uv_tcp_open(&w->listener, listen_fd)) != 0 ||
        (rc = uv_timer_init(&w->loop, &w->store_wait)) != 0 ||
        (rc = uv_timer_init(&w->loop, &w->tick)) != 0 ||
        (rc = uv_timer_start(&w->tick, worker_on_tick, 1000, 1000)) != 0 ||
        (rc = uv_prepare_init(&w->loop, &w->flusher)) != 0 ||
        (rc = uv_prepare_start(&w->flusher, worker_on_prepare)) != 0 ||
        (rc = uv_timer_init(&w->loop, &w->flush_timer)) != 0 ||
        (rc = worker_start_signal(w, &w->sig_term, SIGTERM)) != 0 ||
        (rc = worker_start_signal(w, &w->sig_int, SIGINT)) != 0 ||
        (rc = worker_start_signal(w, &w->sig_quit, SIGQUIT)) != 0 ||
        (rc = worker_start_signal(w, &w->sig_usr1, SIGUSR1)) != 0 ||
        (rc = worker_start_signal(w, &w->sig_hup, SIGHUP)) != 0) {
        log_error("event=worker_start_failed err=\"%s\"", uv_strerror(rc));
        goto done;
    }
    if (pem != NULL && tls_fd != -1) {
        if ((rc = uv_tcp_init(&w->loop, &w->tls_listener)) != 0) {
            log_error("event=worker_start_failed call=uv_tcp_init err=\"%s\"", uv_strerror(rc));
            goto done;
        }
        w->open_tls = 1;
        if ((rc = uv_tcp_open(&w->tls_listener, tls_fd)) != 0) {
            log_error("event=worker_start_failed call=uv_tcp_open err=\"%s\"", uv_strerror(rc));
            goto done;
        }
    }
    uv_unref((uv_handle_t *)&w->flusher);

    /* The wings: data first (chat needs the bus), then chat, then net,
     * which hands connections to chat. Nothing reports before uv_run. */
    bus_env_t env = { .loop = &w->loop, .cfg = cfg, .metrics = metrics, .slot = slot };
    snprintf(env.wid, sizeof(env.wid), "%s", wid);
    w->bus = bus_new(&env, prev_wid);
    if (w->bus == NULL) {
        log_error("event=worker_start_failed err=\"cannot create the Redis bus\"");
        goto done;
    }
    if (cfg->mongo_uri[0] != '\0') {
        w->archive = archive_new(w->bus);
        if (w->archive == NULL) {
            log_error("event=worker_start_failed err=\"cannot set up the MongoDB archive\"");
            goto done;
        }
    }
    metrics_slot_t *ms = &metrics->slot[slot];
    /* A store that cannot start leaves files answered 503, chat unharmed. */
    w->filestore = filestore_new(&w->loop, cfg);
    files_init(&w->files, cfg, w->filestore, ms);
    chat_init(&w->chat, &w->loop, cfg, ms, w->master_pid, w->bus, w->archive);
    bus_set_handlers(w->bus, chat_bus_handlers(), &w->chat);
    net_init(&w->net, &w->loop, cfg, ms, chat_net_handlers(), &w->chat, chat_conn_size(),
             &worker_net_hooks, w);
    if (pem != NULL) {
        char err[512];
        if (net_tls_use(&w->net, pem, err, sizeof(err)) != 0) {
            log_error("event=worker_start_failed err=\"%s\"", err);
            goto done;
        }
    }

    __atomic_store_n(&ms->pid, (int32_t)getpid(), __ATOMIC_RELAXED);
    int one = slot;
    if (write(ready_fd, &one, sizeof(one)) == -1) {
        log_warn("event=ready_write_failed err=\"%s\"", strerror(errno));
    }
    close(ready_fd);
    w->ready_fd = -1;
    log_info("event=worker_started slot=%d wid=%s", slot, wid);
    w->store_wait_until_ms = uv_now(&w->loop) + WORKER_STORE_WAIT_MS;
    rc = uv_timer_start(&w->store_wait, worker_on_store_wait, 0, WORKER_STORE_POLL_MS);
    if (rc != 0) {
        log_error("event=worker_start_failed call=uv_timer_start err=\"%s\"", uv_strerror(rc));
        goto done;
    }

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
    filestore_free(w->filestore);
    chat_free(&w->chat);
    net_free(&w->net);
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
