/*
 * master: process management only. It binds the listening sockets, forks
 * the workers, and then waits in ppoll() with every signal blocked except
 * during the wait; handlers only set flags, and all work happens in the
 * loop below (the nginx/unicorn model). Signals:
 *   TERM, INT  fast stop: TERM the workers, KILL what is left after a
 *              doubling wait
 *   QUIT       graceful stop: workers stop accepting, close clients with
 *              1001, drain; exit when all are reaped
 *   HUP        re-read the config (a bad one keeps the old), start fresh
 *              workers, then QUIT the old ones; when only the TLS
 *              certificate files changed, the workers swap it in place
 *              instead and every connection stays
 *   USR1       reopen the log, and have the workers do the same
 *   USR2       re-exec the binary, handing it the listening sockets; the old
 *              master keeps serving until it is sent QUIT
 *   TTIN/TTOU  one worker more / fewer (never fewer than one)
 *   CHLD       reap; respawn a worker that died, with backoff if it keeps dying
 *
 * Each worker slot has its own listening socket (two with --tls-port),
 * bound by the master with SO_REUSEPORT, so the kernel spreads connections
 * evenly over the workers. The master reads and checks the TLS certificate
 * and key; workers build their contexts from its copy, so a file gone bad
 * after the start never stops a respawned worker.
 */
#include "../common/config.h"
#include "../common/log.h"
#include "../common/metrics.h"
#include "../worker/net/tls.h"
#include "../worker/worker.h"
#include "sdnotify.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MASTER_MAX_SLOTS METRICS_SLOTS
#define MASTER_BACKOFF_MIN_MS 100
#define MASTER_BACKOFF_MAX_MS 30000
/* A worker that dies sooner than this after its start counts as crashing. */
#define MASTER_HEALTHY_MS 5000
#define MASTER_KILL_AFTER_MS 3000

typedef struct {
    pid_t pid;                  /* 0: not running */
    int fd;                     /* this slot's listening socket, -1 if none */
    int tls_fd;                 /* its --tls-port socket, -1 if none */
    int ready;
    int fails;                  /* quick deaths in a row */
    uint64_t started_ms;
    uint64_t respawn_at_ms;     /* 0: none scheduled */
    char prev_wid[128];         /* the dead predecessor to reap */
} slot_t;

typedef struct {
    config_t cfg;
    int argc;
    char **argv;
    slot_t slots[MASTER_MAX_SLOTS];
    int nslots;                 /* slots in use: 0 .. nslots-1 */
    pid_t retiring[MASTER_MAX_SLOTS * 4];
    int nretiring;
    int ready_rd, ready_wr;
    int announced;
    int reloading;              /* told systemd RELOADING=1; READY=1 when the new workers are */
    int port;
    int tls_port;               /* the bound --tls-port, -1 if none */
    tls_pem_t pem;              /* the checked certificate and key (TLS on) */
    metrics_t *metrics;
    int stopping;               /* 0, 1 graceful, 2 fast */
    pid_t upgrade_pid;          /* the new master started by USR2, or 0 */
    char exe[4096];             /* this binary, for USR2 */
    uint64_t stop_started_ms;
    uint64_t next_kill_step_ms;
    uint64_t kill_step_ms;
} master_t;

static volatile sig_atomic_t sig_chld, sig_term, sig_quit, sig_hup, sig_usr1, sig_usr2, sig_ttin, sig_ttou;

static void master_pidfile_rename(const master_t *m, int to_old);

static void master_on_signal(int signo)
{
    switch (signo) {
    case SIGCHLD: sig_chld = 1; break;
    case SIGTERM:
    case SIGINT: sig_term = 1; break;
    case SIGQUIT: sig_quit = 1; break;
    case SIGHUP: sig_hup = 1; break;
    case SIGUSR1: sig_usr1 = 1; break;
    case SIGUSR2: sig_usr2 = 1; break;
    case SIGTTIN: sig_ttin++; break;
    case SIGTTOU: sig_ttou++; break;
    default: break;
    }
}

static const int master_signals[] = {
    SIGCHLD, SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGUSR1, SIGUSR2, SIGTTIN, SIGTTOU
};

static uint64_t master_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Creates one listening socket on bind:port with SO_REUSEPORT. */
static int master_listen(const char *bind_addr, int port)
{
    struct addrinfo hints = { 0 }, *res = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    char portstr[16];
    snprintf(portstr, sizeof(portstr), "%d", port);
    int rc = getaddrinfo(bind_addr, portstr, &hints, &res);
    if (rc != 0) {
        log_error("event=bind_failed call=getaddrinfo addr=%s err=\"%s\"", bind_addr, gai_strerror(rc));
        return -1;
    }
    int fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd == -1) {
        log_error("event=bind_failed call=socket err=\"%s\"", strerror(errno));
        freeaddrinfo(res);
        return -1;
    }
    int one = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) == -1 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) == -1) {
        log_error("event=bind_failed call=setsockopt err=\"%s\"", strerror(errno));
        goto fail;
    }
    if (bind(fd, res->ai_addr, res->ai_addrlen) == -1) {
        log_error("event=bind_failed call=bind addr=%s port=%d err=\"%s\"", bind_addr, port, strerror(errno));
        goto fail;
    }
    if (listen(fd, 4096) == -1) {
        log_error("event=bind_failed call=listen err=\"%s\"", strerror(errno));
        goto fail;
    }
    freeaddrinfo(res);
    return fd;
fail:
    close(fd);
    freeaddrinfo(res);
    return -1;
}

static int master_bound_port(int fd)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    if (getsockname(fd, (struct sockaddr *)&ss, &len) == -1) {
        return -1;
    }
    return ss.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&ss)->sin6_port)
                                    : ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

static void master_wid(const master_t *m, pid_t pid, char *out, size_t len)
{
    char host[64];
    if (gethostname(host, sizeof(host)) == -1) {
        snprintf(host, sizeof(host), "localhost");
    }
    host[sizeof(host) - 1] = '\0';
    (void)m;
    snprintf(out, len, "%s:%d:%d", host, (int)getpid(), (int)pid);
}

static int master_tls_on(const master_t *m)
{
    return m->cfg.tls_cert[0] != '\0';
}

/* Binds a slot's sockets: --port, and --tls-port when configured. */
static int master_listen_slot(master_t *m, slot_t *s)
{
    s->fd = master_listen(m->cfg.bind, m->port);
    s->tls_fd = -1;
    if (s->fd == -1) {
        return -1;
    }
    if (m->tls_port >= 0) {
        s->tls_fd = master_listen(m->cfg.bind, m->tls_port);
        if (s->tls_fd == -1) {
            close(s->fd);
            s->fd = -1;
            return -1;
        }
    }
    return 0;
}

static void master_close_slot(slot_t *s)
{
    if (s->fd != -1) {
        close(s->fd);
        s->fd = -1;
    }
    if (s->tls_fd != -1) {
        close(s->tls_fd);
        s->tls_fd = -1;
    }
}

static void master_spawn(master_t *m, int i)
{
    slot_t *s = &m->slots[i];
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == -1) {
        log_error("event=spawn_failed call=fork slot=%d err=\"%s\"", i, strerror(errno));
        s->respawn_at_ms = master_now_ms() + MASTER_BACKOFF_MIN_MS;
        return;
    }
    if (pid == 0) {
        /* The child: default signal handling, only its own socket. */
        struct sigaction sa = { 0 };
        sa.sa_handler = SIG_DFL;
        for (size_t k = 0; k < sizeof(master_signals) / sizeof(master_signals[0]); k++) {
            sigaction(master_signals[k], &sa, NULL);
        }
        /* A certificate reload may reach a worker before its loop watches
         * for it: ignored then (it starts with the new one anyway), not
         * the default death. */
        sa.sa_handler = SIG_IGN;
        sigaction(SIGHUP, &sa, NULL);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        for (int k = 0; k < m->nslots; k++) {
            if (k != i && m->slots[k].fd != -1) {
                close(m->slots[k].fd);
            }
            if (k != i && m->slots[k].tls_fd != -1) {
                close(m->slots[k].tls_fd);
            }
        }
        close(m->ready_rd);
        int status = worker_run(&m->cfg, i, s->fd, s->tls_fd, master_tls_on(m) ? &m->pem : NULL, m->ready_wr,
                                m->metrics, s->prev_wid);
        exit(status);
    }
    s->pid = pid;
    s->ready = 0;
    s->started_ms = master_now_ms();
    s->respawn_at_ms = 0;
    s->prev_wid[0] = '\0';
    log_info("event=worker_spawned slot=%d pid=%d", i, (int)pid);
}

static int master_add_slot(master_t *m)
{
    if (m->nslots >= MASTER_MAX_SLOTS) {
        log_warn("event=scale_refused reason=\"at most %d workers\"", MASTER_MAX_SLOTS);
        return -1;
    }
    slot_t *s = &m->slots[m->nslots];
    memset(s, 0, sizeof(*s));
    if (master_listen_slot(m, s) != 0) {
        return -1;
    }
    m->nslots++;
    master_spawn(m, m->nslots - 1);
    return 0;
}

static void master_retire(master_t *m, pid_t pid)
{
    if (pid > 0 && m->nretiring < (int)(sizeof(m->retiring) / sizeof(m->retiring[0]))) {
        m->retiring[m->nretiring++] = pid;
        kill(pid, SIGQUIT);
    }
}

static void master_remove_slot(master_t *m)
{
    if (m->nslots <= 1) {
        log_warn("event=scale_refused reason=\"at least one worker\"");
        return;
    }
    slot_t *s = &m->slots[m->nslots - 1];
    master_retire(m, s->pid);
    /* The worker keeps its copy until it has stopped accepting; the
     * master's goes now so that the socket dies with that worker. */
    master_close_slot(s);
    m->nslots--;
}

static void master_publish_count(master_t *m)
{
    __atomic_store_n(&m->metrics->workers, m->nslots, __ATOMIC_RELAXED);
}

static void master_reap(master_t *m)
{
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        int found = 0;
        if (pid == m->upgrade_pid) {
            /* The new master died before we were told to quit: we stay. */
            log_error("event=upgrade_failed new_master=%d status=%d", (int)pid, status);
            m->upgrade_pid = 0;
            master_pidfile_rename(m, 0);
            continue;
        }
        for (int k = 0; k < m->nretiring; k++) {
            if (m->retiring[k] == pid) {
                m->retiring[k] = m->retiring[--m->nretiring];
                log_info("event=worker_retired pid=%d", (int)pid);
                found = 1;
                break;
            }
        }
        for (int i = 0; !found && i < m->nslots; i++) {
            slot_t *s = &m->slots[i];
            if (s->pid != pid) {
                continue;
            }
            found = 1;
            s->pid = 0;
            if (__atomic_load_n(&m->metrics->slot[i].pid, __ATOMIC_RELAXED) == pid) {
                metrics_set(&m->metrics->slot[i].connections, 0);
            }
            if (m->stopping) {
                break;
            }
            uint64_t now = master_now_ms();
            uint64_t lived = now - s->started_ms;
            if (WIFSIGNALED(status)) {
                log_error("event=worker_died slot=%d pid=%d signal=%d lived_ms=%llu", i, (int)pid,
                          WTERMSIG(status), (unsigned long long)lived);
            } else {
                log_error("event=worker_died slot=%d pid=%d status=%d lived_ms=%llu", i, (int)pid,
                          WEXITSTATUS(status), (unsigned long long)lived);
            }
            master_wid(m, pid, s->prev_wid, sizeof(s->prev_wid));
            s->fails = lived < MASTER_HEALTHY_MS ? s->fails + 1 : 0;
            uint64_t delay = 0;
            if (s->fails > 0) {
                delay = MASTER_BACKOFF_MIN_MS << (s->fails > 9 ? 9 : s->fails - 1);
                if (delay > MASTER_BACKOFF_MAX_MS) {
                    delay = MASTER_BACKOFF_MAX_MS;
                }
                if (s->fails >= 3) {
                    log_error("event=worker_crash_loop slot=%d fails=%d respawn_in_ms=%llu", i,
                              s->fails, (unsigned long long)delay);
                }
            }
            s->respawn_at_ms = now + delay;
        }
        if (!found) {
            log_debug("event=reaped_unknown pid=%d", (int)pid);
        }
    }
}

static int master_children(const master_t *m)
{
    int n = m->nretiring;
    for (int i = 0; i < m->nslots; i++) {
        n += m->slots[i].pid != 0;
    }
    return n;
}

static void master_signal_all(master_t *m, int signo)
{
    for (int i = 0; i < m->nslots; i++) {
        if (m->slots[i].pid != 0) {
            kill(m->slots[i].pid, signo);
        }
    }
    for (int k = 0; k < m->nretiring; k++) {
        kill(m->retiring[k], signo);
    }
}

/* Tells systemd (when it started us with Type=notify); a failure is
 * logged, never fatal. */
static void master_notify(const char *state)
{
    if (sdnotify_send(state) < 0) {
        log_warn("event=sd_notify_failed err=\"%s\"", strerror(errno));
    }
}

/* Ticket keys live as long as the master: workers old and new, and the
 * ones that swap certificates in place, keep resuming each other's. */
static void master_keep_tickets(const master_t *m, tls_pem_t *next)
{
    memcpy(next->tickets, m->pem.tickets, sizeof(next->tickets));
    next->has_tickets = m->pem.has_tickets;
}

static void master_reload(master_t *m)
{
    config_t next;
    char err[512];
    int exit_now = 0;
    if (config_load(&next, m->argc, m->argv, &exit_now, err, sizeof(err)) != 0) {
        log_error("event=reload_rejected err=\"%s\" keeping=old", err);
        return;
    }
    if (next.port != m->cfg.port || strcmp(next.bind, m->cfg.bind) != 0) {
        log_warn("event=reload_note msg=\"port and bind change only on restart or upgrade\"");
        next.port = m->cfg.port;
        snprintf(next.bind, sizeof(next.bind), "%s", m->cfg.bind);
    }
    if ((next.tls_cert[0] != '\0') != master_tls_on(m) || next.tls_port != m->cfg.tls_port) {
        /* Which sockets speak TLS is fixed with the sockets themselves. */
        log_warn("event=reload_note msg=\"TLS on or off and tls-port change only on restart or upgrade\"");
        next.tls_port = m->cfg.tls_port;
        snprintf(next.tls_cert, sizeof(next.tls_cert), "%s", m->cfg.tls_cert);
        snprintf(next.tls_key, sizeof(next.tls_key), "%s", m->cfg.tls_key);
    }
    tls_pem_t pem = { 0 };
    int pem_changed = 0, pem_bad = 0;
    if (next.tls_cert[0] != '\0') {
        if (tls_pem_load(&pem, next.tls_cert, next.tls_key, err, sizeof(err)) != 0) {
            log_error("event=tls_reload_rejected err=\"%s\" keeping=old", err);
            pem_bad = 1;
        } else {
            pem_changed = !tls_pem_equal(&pem, &m->pem);
        }
    }
    if ((pem_changed || pem_bad) && config_equal(&next, &m->cfg)) {
        /* Only the certificate files changed (a renewal): every worker
         * swaps it in place, so no connection is dropped for it. */
        if (pem_changed) {
            master_keep_tickets(m, &pem);
            tls_pem_free(&m->pem);
            m->pem = pem;
            master_notify("RELOADING=1");
            for (int i = 0; i < m->nslots; i++) {
                if (m->slots[i].pid != 0) {
                    kill(m->slots[i].pid, SIGHUP);
                }
            }
            log_info("event=tls_reloaded workers=%d", m->nslots);
            master_notify("READY=1");
        }
        return;
    }
    if (pem_changed) {
        master_keep_tickets(m, &pem);
        tls_pem_free(&m->pem);
        m->pem = pem;
    } else {
        tls_pem_free(&pem);
    }
    m->cfg = next;
    /* systemd's ExecReload waits for READY=1 again: sent once every slot's
     * new worker is ready (master_read_ready). */
    struct timespec mono;
    char state[96];
    clock_gettime(CLOCK_MONOTONIC, &mono);
    snprintf(state, sizeof(state), "RELOADING=1\nMONOTONIC_USEC=%llu",
             (unsigned long long)mono.tv_sec * 1000000ULL + (unsigned long long)mono.tv_nsec / 1000ULL);
    master_notify(state);
    m->reloading = 1;
    log_set_level((log_level_t)log_level_parse(m->cfg.log_level));
    if (log_open(m->cfg.log_file[0] ? m->cfg.log_file : NULL, (log_level_t)log_level_parse(m->cfg.log_level)) != 0) {
        log_error("event=log_open_failed file=%s", m->cfg.log_file);
    }
    log_info("event=reload workers=%d", m->cfg.workers);
    /* Fresh workers take over each slot's socket; the old ones stop
     * accepting and drain. */
    for (int i = 0; i < m->nslots; i++) {
        pid_t old = m->slots[i].pid;
        master_spawn(m, i);
        master_retire(m, old);
    }
    while (m->nslots < m->cfg.workers) {
        if (master_add_slot(m) != 0) {
            break;
        }
    }
    while (m->nslots > m->cfg.workers) {
        master_remove_slot(m);
    }
    master_publish_count(m);
}

/* The variable a re-executed master finds its listening sockets in. */
#define MASTER_INHERIT_ENV "CHATD_INHERIT_FDS"

static void master_pidfile_rename(const master_t *m, int to_old)
{
    if (m->cfg.pidfile[0] == '\0') {
        return;
    }
    char old[1100];
    int n = snprintf(old, sizeof(old), "%s.oldbin", m->cfg.pidfile);
    if (n < 0 || (size_t)n >= sizeof(old)) {
        return;
    }
    const char *from = to_old ? m->cfg.pidfile : old;
    const char *to = to_old ? old : m->cfg.pidfile;
    if (rename(from, to) == -1) {
        log_warn("event=pidfile_rename_failed from=%s to=%s err=\"%s\"", from, to, strerror(errno));
    }
}

/* USR2: starts the (possibly new) binary with our sockets, like nginx. */
static void master_upgrade(master_t *m)
{
    if (m->upgrade_pid != 0) {
        log_warn("event=upgrade_refused reason=\"an upgrade is already running\" pid=%d", (int)m->upgrade_pid);
        return;
    }
    /* "fd[:tls_fd],..." */
    char fds[MASTER_MAX_SLOTS * 16];
    size_t off = 0;
    for (int i = 0; i < m->nslots; i++) {
        char tls[16] = "";
        if (m->slots[i].tls_fd != -1) {
            snprintf(tls, sizeof(tls), ":%d", m->slots[i].tls_fd);
        }
        int n = snprintf(fds + off, sizeof(fds) - off, "%s%d%s", i ? "," : "", m->slots[i].fd, tls);
        if (n < 0 || (size_t)n >= sizeof(fds) - off) {
            return;
        }
        off += (size_t)n;
    }
    fflush(stderr);
    /* Before the fork: the new master writes the pidfile as it starts. */
    master_pidfile_rename(m, 1);
    pid_t pid = fork();
    if (pid == -1) {
        log_error("event=upgrade_failed call=fork err=\"%s\"", strerror(errno));
        master_pidfile_rename(m, 0);
        return;
    }
    if (pid == 0) {
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        for (int i = 0; i < m->nslots; i++) {
            int fl = fcntl(m->slots[i].fd, F_GETFD);
            if (fl == -1 || fcntl(m->slots[i].fd, F_SETFD, fl & ~FD_CLOEXEC) == -1) {
                _exit(127);
            }
            if (m->slots[i].tls_fd != -1 && ((fl = fcntl(m->slots[i].tls_fd, F_GETFD)) == -1 ||
                                             fcntl(m->slots[i].tls_fd, F_SETFD, fl & ~FD_CLOEXEC) == -1)) {
                _exit(127);
            }
        }
        setenv(MASTER_INHERIT_ENV, fds, 1);
        execv(m->exe, m->argv);
        log_error("event=upgrade_failed call=execv path=%s err=\"%s\"", m->exe, strerror(errno));
        _exit(127);
    }
    m->upgrade_pid = pid;
    log_info("event=upgrade_started new_master=%d", (int)pid);
}

/*
 * Takes the sockets an upgrading master handed over. Returns how many
 * slots were filled, or -1 if the variable is malformed.
 */
static int master_inherit(master_t *m)
{
    const char *v = getenv(MASTER_INHERIT_ENV);
    if (v == NULL || v[0] == '\0') {
        return 0;
    }
    char *copy = strdup(v);
    if (copy == NULL) {
        return -1;
    }
    int n = 0;
    char *save = NULL;
    for (char *tok = strtok_r(copy, ",", &save); tok != NULL && n < MASTER_MAX_SLOTS;
         tok = strtok_r(NULL, ",", &save)) {
        char *end;
        long fd = strtol(tok, &end, 10);
        long tls_fd = -1;
        if (*end == ':') {
            tls_fd = strtol(end + 1, &end, 10);
            if (tls_fd < 3 || fcntl((int)tls_fd, F_GETFD) == -1) {
                free(copy);
                return -1;
            }
            fcntl((int)tls_fd, F_SETFD, FD_CLOEXEC);
        }
        if (*end != '\0' || fd < 3 || fcntl((int)fd, F_GETFD) == -1) {
            free(copy);
            return -1;
        }
        fcntl((int)fd, F_SETFD, FD_CLOEXEC);
        m->slots[n].fd = (int)fd;
        m->slots[n].tls_fd = (int)tls_fd;
        n++;
    }
    free(copy);
    unsetenv(MASTER_INHERIT_ENV);
    return n;
}

static void master_read_ready(master_t *m)
{
    int slot;
    ssize_t n;
    while ((n = read(m->ready_rd, &slot, sizeof(slot))) == (ssize_t)sizeof(slot)) {
        if (slot >= 0 && slot < m->nslots) {
            m->slots[slot].ready = 1;
        }
    }
    if (m->announced && !m->reloading) {
        return;
    }
    for (int i = 0; i < m->nslots; i++) {
        if (!m->slots[i].ready) {
            return;
        }
    }
    char status[160];
    char tls[32] = "";
    if (master_tls_on(m)) {
        snprintf(tls, sizeof(tls), " tls_port=%d", m->tls_port >= 0 ? m->tls_port : m->port);
    }
    snprintf(status, sizeof(status), "READY=1\nSTATUS=serving on port %d with %d workers\nMAINPID=%d",
             m->port, m->nslots, (int)getpid());
    if (m->announced) {
        if (m->reloading) {
            m->reloading = 0;
            master_notify(status);
        }
        return;
    }
    m->announced = 1;
    fprintf(stderr, "chatd ready port=%d workers=%d%s\n", m->port, m->nslots, tls);
    fflush(stderr);
    log_info("event=ready port=%d workers=%d%s", m->port, m->nslots, tls);
    master_notify(status);
}

static void master_begin_stop(master_t *m, int how)
{
    if (m->stopping >= how) {
        return;
    }
    m->stopping = how;
    master_notify("STOPPING=1");
    m->stop_started_ms = master_now_ms();
    m->kill_step_ms = 100;
    m->next_kill_step_ms = m->stop_started_ms + m->kill_step_ms;
    log_info("event=%s workers=%d", how == 2 ? "fast_stop" : "graceful_stop", master_children(m));
    master_signal_all(m, how == 2 ? SIGTERM : SIGQUIT);
}

/* Escalation: TERM again with a doubling delay, then KILL. */
static void master_stop_step(master_t *m, uint64_t now)
{
    uint64_t limit = m->stopping == 2 ? MASTER_KILL_AFTER_MS
                                      : (uint64_t)m->cfg.shutdown_timeout * 1000 + MASTER_KILL_AFTER_MS;
    if (now - m->stop_started_ms >= limit) {
        log_warn("event=killing_workers left=%d", master_children(m));
        master_signal_all(m, SIGKILL);
        return;
    }
    if (m->stopping == 2 && now >= m->next_kill_step_ms) {
        master_signal_all(m, SIGTERM);
        m->kill_step_ms *= 2;
        m->next_kill_step_ms = now + m->kill_step_ms;
    }
}

static int master_write_pidfile(const char *path)
{
    char tmp[1100];
    int n = snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    if (n < 0 || (size_t)n >= sizeof(tmp)) {
        log_error("event=pidfile_failed path=%s err=\"path too long\"", path);
        return -1;
    }
    FILE *f = fopen(tmp, "we");
    if (f == NULL) {
        log_error("event=pidfile_failed call=fopen path=%s err=\"%s\"", tmp, strerror(errno));
        return -1;
    }
    fprintf(f, "%d\n", (int)getpid());
    if (fclose(f) != 0 || rename(tmp, path) == -1) {
        log_error("event=pidfile_failed path=%s err=\"%s\"", path, strerror(errno));
        return -1;
    }
    return 0;
}

static void master_unlink_own_pidfile(const char *path)
{
    FILE *f = fopen(path, "re");
    if (f == NULL) {
        return;
    }
    int pid = 0;
    int ok = fscanf(f, "%d", &pid) == 1;
    fclose(f);
    if (ok && pid == (int)getpid() && unlink(path) == -1) {
        log_warn("event=pidfile_unlink_failed path=%s err=\"%s\"", path, strerror(errno));
    }
}

int main(int argc, char **argv)
{
    static master_t master;
    master_t *m = &master;
    char err[512];
    int exit_now = 0;
    if (config_load(&m->cfg, argc, argv, &exit_now, err, sizeof(err)) != 0) {
        fprintf(stderr, "chatd: %s\n", err);
        return 2;
    }
    if (exit_now == CONFIG_CHECK_ONLY) {
        if (m->cfg.tls_cert[0] != '\0') {
            if (tls_pem_load(&m->pem, m->cfg.tls_cert, m->cfg.tls_key, err, sizeof(err)) != 0) {
                fprintf(stderr, "chatd: %s\n", err);
                return 2;
            }
            tls_pem_free(&m->pem);
        }
        config_print_ok(&m->cfg);
        return 0;
    }
    if (exit_now) {
        return 0;
    }
    m->argc = argc;
    m->argv = argv;
    if (log_open(m->cfg.log_file[0] ? m->cfg.log_file : NULL,
                 (log_level_t)log_level_parse(m->cfg.log_level)) != 0) {
        fprintf(stderr, "chatd: cannot open log file %s: %s\n", m->cfg.log_file, strerror(errno));
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);
    if (master_tls_on(m) && tls_pem_load(&m->pem, m->cfg.tls_cert, m->cfg.tls_key, err, sizeof(err)) != 0) {
        log_error("event=start_failed err=\"%s\"", err);
        fprintf(stderr, "chatd: %s\n", err);
        return 1;
    }
    for (int i = 0; i < MASTER_MAX_SLOTS; i++) {
        m->slots[i].fd = m->slots[i].tls_fd = -1;
    }
    m->tls_port = -1;

    sigset_t block, waitmask;
    sigemptyset(&block);
    struct sigaction sa = { 0 };
    sa.sa_handler = master_on_signal;
    sigemptyset(&sa.sa_mask);
    for (size_t k = 0; k < sizeof(master_signals) / sizeof(master_signals[0]); k++) {
        sigaddset(&block, master_signals[k]);
        if (sigaction(master_signals[k], &sa, NULL) == -1) {
            log_error("event=start_failed call=sigaction err=\"%s\"", strerror(errno));
            return 1;
        }
    }
    if (sigprocmask(SIG_BLOCK, &block, &waitmask) == -1) {
        log_error("event=start_failed call=sigprocmask err=\"%s\"", strerror(errno));
        return 1;
    }
    sigdelset(&waitmask, SIGCHLD);
    for (size_t k = 0; k < sizeof(master_signals) / sizeof(master_signals[0]); k++) {
        sigdelset(&waitmask, master_signals[k]);
    }

    m->metrics = metrics_create();
    if (m->metrics == NULL) {
        log_error("event=start_failed call=mmap err=\"%s\"", strerror(errno));
        return 1;
    }
    __atomic_store_n(&m->metrics->mongo_up, m->cfg.mongo_uri[0] != '\0' ? 0 : -1, __ATOMIC_RELAXED);
    if (m->cfg.mongo_uri[0] == '\0') {
        log_info("event=archive_off msg=\"no mongo-uri: history is limited to the recent log kept in Redis\"");
    }
    int pipefd[2];
    if (pipe2(pipefd, O_NONBLOCK | O_CLOEXEC) == -1) {
        log_error("event=start_failed call=pipe2 err=\"%s\"", strerror(errno));
        return 1;
    }
    m->ready_rd = pipefd[0];
    m->ready_wr = pipefd[1];

    ssize_t exelen = readlink("/proc/self/exe", m->exe, sizeof(m->exe) - 1);
    if (exelen <= 0) {
        snprintf(m->exe, sizeof(m->exe), "%s", argv[0]);
    } else {
        m->exe[exelen] = '\0';
    }
    int inherited = master_inherit(m);
    if (inherited < 0) {
        log_error("event=start_failed reason=\"bad %s\"", MASTER_INHERIT_ENV);
        return 1;
    }
    int want_tls_port = master_tls_on(m) && m->cfg.tls_port >= 0;
    if (inherited > 0) {
        /* A binary upgrade: serve on the old master's sockets, so the port
         * never stops accepting. */
        m->nslots = inherited;
        m->port = master_bound_port(m->slots[0].fd);
        while (m->nslots > m->cfg.workers) {
            master_close_slot(&m->slots[--m->nslots]);
        }
        for (int i = 0; i < m->nslots; i++) {
            slot_t *s = &m->slots[i];
            if (!want_tls_port && s->tls_fd != -1) {
                close(s->tls_fd);
                s->tls_fd = -1;
            }
            if (want_tls_port && m->tls_port < 0) {
                m->tls_port = s->tls_fd != -1 ? master_bound_port(s->tls_fd) : -1;
            }
        }
        if (want_tls_port && m->tls_port < 0) {
            m->tls_port = m->cfg.tls_port;
        }
        for (int i = 0; want_tls_port && i < m->nslots; i++) {
            if (m->slots[i].tls_fd == -1 && (m->slots[i].tls_fd = master_listen(m->cfg.bind, m->tls_port)) == -1) {
                return 1;
            }
            m->tls_port = master_bound_port(m->slots[i].tls_fd);
        }
        log_info("event=inherited_sockets count=%d port=%d", inherited, m->port);
    } else {
        /* The first sockets fix the ports (when 0 asks for any). */
        int fd = master_listen(m->cfg.bind, m->cfg.port);
        if (fd == -1) {
            return 1;
        }
        m->port = master_bound_port(fd);
        m->slots[0].fd = fd;
        if (want_tls_port) {
            int tfd = master_listen(m->cfg.bind, m->cfg.tls_port);
            if (tfd == -1) {
                return 1;
            }
            m->tls_port = master_bound_port(tfd);
            m->slots[0].tls_fd = tfd;
        }
        m->nslots = 1;
    }
    for (int i = m->nslots; i < m->cfg.workers; i++) {
        if (master_listen_slot(m, &m->slots[i]) != 0) {
            return 1;
        }
        m->nslots++;
    }
    if (m->cfg.pidfile[0] != '\0' && master_write_pidfile(m->cfg.pidfile) != 0) {
        return 1;
    }
    if (m->cfg.redis_cluster[0] != '\0') {
        log_info("event=start version=%s port=%d workers=%d redis_cluster=%s ack_replicas=%d", CHATD_VERSION,
                 m->port, m->nslots, m->cfg.redis_cluster, m->cfg.ack_replicas);
    } else {
        log_info("event=start version=%s port=%d workers=%d redis=%s ack_replicas=%d", CHATD_VERSION, m->port,
                 m->nslots, m->cfg.redis_url, m->cfg.ack_replicas);
    }
    if (m->cfg.jwt_secret[0] == '\0') {
        log_warn("event=dev_mode msg=\"no jwt-secret: any ?user= is accepted\"");
    }
    for (int i = 0; i < m->nslots; i++) {
        master_spawn(m, i);
    }
    master_publish_count(m);

    for (;;) {
        uint64_t now = master_now_ms();
        if (sig_chld) {
            sig_chld = 0;
            master_reap(m);
        }
        if (sig_term) {
            sig_term = 0;
            master_begin_stop(m, 2);
        }
        if (sig_quit) {
            sig_quit = 0;
            master_begin_stop(m, 1);
        }
        if (sig_usr1) {
            sig_usr1 = 0;
            log_reopen();
            log_info("event=log_reopened");
            master_signal_all(m, SIGUSR1);
        }
        if (sig_usr2) {
            sig_usr2 = 0;
            if (!m->stopping) {
                master_upgrade(m);
            }
        }
        if (sig_hup) {
            sig_hup = 0;
            if (!m->stopping) {
                master_reload(m);
            }
        }
        while (sig_ttin > 0 && !m->stopping) {
            sig_ttin--;
            master_add_slot(m);
            m->cfg.workers = m->nslots;
            master_publish_count(m);
        }
        while (sig_ttou > 0 && !m->stopping) {
            sig_ttou--;
            master_remove_slot(m);
            m->cfg.workers = m->nslots;
            master_publish_count(m);
        }
        if (m->stopping) {
            if (master_children(m) == 0) {
                break;
            }
            master_stop_step(m, now);
        } else {
            for (int i = 0; i < m->nslots; i++) {
                slot_t *s = &m->slots[i];
                if (s->pid == 0 && s->respawn_at_ms != 0 && now >= s->respawn_at_ms) {
                    master_spawn(m, i);
                }
            }
        }
        master_read_ready(m);

        /* Sleep until a signal, a ready byte, or the next timed step. */
        int timeout = m->stopping ? 50 : 1000;
        for (int i = 0; i < m->nslots; i++) {
            if (m->slots[i].pid == 0 && m->slots[i].respawn_at_ms != 0) {
                uint64_t due = m->slots[i].respawn_at_ms;
                int t = due > now ? (int)(due - now) : 0;
                timeout = t < timeout ? t : timeout;
            }
        }
        struct pollfd pfd = { m->ready_rd, POLLIN, 0 };
        struct timespec ts = { timeout / 1000, (long)(timeout % 1000) * 1000000L };
        if (ppoll(&pfd, 1, &ts, &waitmask) == -1 && errno != EINTR) {
            log_error("event=ppoll_failed err=\"%s\"", strerror(errno));
        }
    }
    if (m->cfg.pidfile[0] != '\0') {
        /* After an upgrade the pidfile is the new master's; ours is .oldbin. */
        char old[sizeof(m->cfg.pidfile) + 16];
        int n = snprintf(old, sizeof(old), "%s.oldbin", m->cfg.pidfile);
        master_unlink_own_pidfile(m->cfg.pidfile);
        if (n > 0 && (size_t)n < sizeof(old)) {
            master_unlink_own_pidfile(old);
        }
    }
    log_info("event=stopped");
    return 0;
}
