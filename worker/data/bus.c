#include "bus.h"
#include "hashslot.h"
#include "pubsub.h"
#include "store.h"
#include "redisuv.h"
#include "../../common/log.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>

#define BUS_BACKOFF_MIN_MS 1000
#define BUS_BACKOFF_MAX_MS 5000
/* A command unanswered this long means Redis is stuck: drop and redial. */
#define BUS_STALL_MS 10000
/* How often a cluster's slot map is read again when all is well, and
 * when a node or a slot is missing. */
#define BUS_REFRESH_MS 5000
#define BUS_REFRESH_DEGRADED_MS 1000
/* Redirections one command may follow, and TRYAGAIN retries (x 20 ms). */
#define BUS_MAX_REDIRECTS 5
#define BUS_MAX_TRYAGAIN 50
#define BUS_TRYAGAIN_MS 20
#define BUS_MAX_NODES METRICS_REDIS_NODES

typedef struct bus_waiter_s bus_waiter_t;
struct bus_waiter_s {
    bus_waiter_t *next;
    bus_wait_cb_t *cb;
    void *arg;
    int n;
    int timeout_ms;
};

/* One Redis node. Nodes live in the bus's array until the bus is freed
 * (hiredis keeps a pointer to them); a slot is reused only when both of
 * its links are gone. */
typedef struct bus_node_s {
    bus_t *bus;
    int index;
    int used;
    int serving;                /* has slots (always, against one Redis) */
    char host[256];
    int port;
    redisAsyncContext *cmd;
    int cmd_up;
    /* With --ack-replicas, sends go on a link of their own: their WAIT
     * holds up every command behind it on its link (for up to the ack
     * timeout when a shard has lost its replicas), and reads, presence and
     * pings should not wait for that. */
    redisAsyncContext *dur;
    int dur_up;
    pubsub_t *sub;
    int sub_up;
    uint64_t retry_at_ms;       /* when to redial; 0 when nothing is scheduled */
    uint64_t dial_ms;           /* when the last dial started */
    uint64_t backoff_ms;
    uint64_t ping_sent_ms;      /* 0 when no health ping is outstanding */
    uint64_t last_ok_ms;
    bus_waiter_t *waiters[2];   /* WAIT callers of this iteration per link (cmd, dur), newest first */
} bus_node_t;

/* A cluster command, kept for a resend after MOVED, ASK or TRYAGAIN. */
typedef struct bus_req_s bus_req_t;
struct bus_req_s {
    bus_t *bus;
    bus_cb_t *cb;
    void *privdata;
    unsigned slot;
    int redirects;
    int tries;
    int ask_node;               /* node to send to after ASKING, or -1 */
    int durable;                /* goes on the node's durable link */
    bus_req_t *next;            /* in the TRYAGAIN list */
    int argc;
    const char **argv;          /* argv, lens and the bytes follow the struct */
    size_t *lens;
};

struct bus_s {
    bus_env_t env;
    const bus_handlers_t *h;
    void *ud;
    int cluster;
    int durable;                /* --ack-replicas: nodes have a durable link */
    int closing;
    bus_node_t nodes[BUS_MAX_NODES];
    int nnodes;                 /* slots of nodes[] ever used */
    /* slot -> node index + 1 (0: no node known). One Redis: all node 0. */
    uint8_t slots[HASHSLOT_COUNT];
    int map_known;
    int map_pending;            /* a CLUSTER SLOTS is in flight */
    uint64_t map_at_ms;         /* when the map was last read */
    uint64_t refresh_at_ms;     /* read it again at or after this; 0 = soon as possible */
    uv_check_t wait_check;      /* sends the WAITs once an iteration */
    uv_timer_t retry_timer;     /* TRYAGAIN resends */
    bus_req_t *retry_head, *retry_tail;
    char password[256];
    int db;
    char prev_wid[128];
};

static metrics_node_t *bus_node_metrics(bus_node_t *n)
{
    return &n->bus->env.metrics->slot[n->bus->env.slot].redis_nodes[n->index];
}

const bus_env_t *bus_env(const bus_t *b)
{
    return &b->env;
}

int bus_is_cluster(const bus_t *b)
{
    return b->cluster;
}

const char *bus_publish_verb(const bus_t *b)
{
    return b->cluster ? "SPUBLISH" : "PUBLISH";
}

void bus_set_handlers(bus_t *b, const bus_handlers_t *h, void *ud)
{
    b->h = h;
    b->ud = ud;
}

const char *bus_prev_wid(const bus_t *b)
{
    return b->prev_wid;
}

void bus_forget_prev_wid(bus_t *b)
{
    b->prev_wid[0] = '\0';
}

/* ------------------------------------------------------------ nodes */

static bus_node_t *bus_node_find(bus_t *b, const char *host, size_t hlen, int port)
{
    for (int i = 0; i < b->nnodes; i++) {
        bus_node_t *n = &b->nodes[i];
        if (n->used && n->port == port && strlen(n->host) == hlen && memcmp(n->host, host, hlen) == 0) {
            return n;
        }
    }
    return NULL;
}

/* Finds or adds the node host:port. Returns NULL when the table is full. */
static bus_node_t *bus_node_get(bus_t *b, const char *host, size_t hlen, int port)
{
    bus_node_t *n = bus_node_find(b, host, hlen, port);
    if (n != NULL) {
        return n;
    }
    if (hlen >= sizeof(n->host)) {
        return NULL;
    }
    for (int i = 0; i < BUS_MAX_NODES; i++) {
        bus_node_t *c = &b->nodes[i];
        if (c->used || c->cmd != NULL || c->dur != NULL || c->sub != NULL) {
            continue;
        }
        memset(c, 0, sizeof(*c));
        c->bus = b;
        c->index = i;
        c->used = 1;
        memcpy(c->host, host, hlen);
        c->host[hlen] = '\0';
        c->port = port;
        if (i >= b->nnodes) {
            b->nnodes = i + 1;
        }
        /* A reused entry is a new series: its counters start again. */
        metrics_node_t *m = bus_node_metrics(c);
        char addr[sizeof(m->addr)];
        snprintf(addr, sizeof(addr), "%s:%d", c->host, port);
        if (strcmp(addr, m->addr) != 0) {
            memset(m, 0, sizeof(*m));
            memcpy(m->addr, addr, sizeof(addr));
        }
        return c;
    }
    log_error("event=redis_too_many_nodes max=%d", BUS_MAX_NODES);
    return NULL;
}

static int bus_node_up(const bus_node_t *n);

static void bus_update_health(bus_t *b)
{
    metrics_set(&b->env.metrics->slot[b->env.slot].redis_up, (uint64_t)bus_healthy(b));
    for (int i = 0; i < b->nnodes; i++) {
        bus_node_t *n = &b->nodes[i];
        metrics_set(&bus_node_metrics(n)->serving, (uint64_t)(n->used && n->serving));
        metrics_set(&bus_node_metrics(n)->up, (uint64_t)(n->used && bus_node_up(n)));
    }
}

static void bus_schedule_retry(bus_node_t *n);
static void bus_node_connect(bus_node_t *n);
static void bus_refresh_soon(bus_t *b);
static void bus_refresh_map(bus_t *b);

static void bus_fail_waiters(bus_node_t *n, int link)
{
    bus_waiter_t *w = n->waiters[link];
    n->waiters[link] = NULL;
    while (w != NULL) {
        bus_waiter_t *next = w->next;
        w->cb(w->arg, 0);
        free(w);
        w = next;
    }
}

static int bus_node_up(const bus_node_t *n)
{
    return n->cmd_up && n->sub_up && (n->dur_up || !n->bus->durable);
}

static void bus_on_disconnect(const redisAsyncContext *ac, int status)
{
    bus_node_t *n = ac->data;
    bus_t *b = n->bus;
    int dur = ac == n->dur;
    if (dur) {
        n->dur = NULL;
        n->dur_up = 0;
    } else {
        n->cmd = NULL;
        n->cmd_up = 0;
        n->ping_sent_ms = 0;
    }
    bus_fail_waiters(n, dur);
    if (!b->closing && n->used) {
        log_warn("event=redis_down conn=%s node=%s:%d err=\"%s\"", dur ? "dur" : "cmd", n->host, n->port,
                 status == REDIS_OK ? "closed" : (ac->errstr[0] ? ac->errstr : "error"));
        metrics_add(&bus_node_metrics(n)->reconnects, 1);
        bus_schedule_retry(n);
        if (b->cluster) {
            bus_refresh_soon(b);
        }
    }
    bus_update_health(b);
}

static void bus_on_connect(const redisAsyncContext *ac, int status)
{
    bus_node_t *n = ac->data;
    bus_t *b = n->bus;
    int dur = ac == n->dur;
    if (status != REDIS_OK) {
        /* hiredis frees the context after this callback. */
        if (dur) {
            n->dur = NULL;
        } else {
            n->cmd = NULL;
        }
        if (!b->closing && n->used) {
            log_debug("event=redis_connect_failed conn=%s node=%s:%d err=\"%s\"", dur ? "dur" : "cmd",
                      n->host, n->port, ac->errstr);
            bus_schedule_retry(n);
            if (b->cluster) {
                bus_refresh_soon(b);
            }
        }
        return;
    }
    log_info("event=redis_up conn=%s host=%s port=%d", dur ? "dur" : "cmd", n->host, n->port);
    if (dur) {
        n->dur_up = 1;
        store_on_node_up(b, n->dur);
        if (bus_node_up(n)) {
            n->backoff_ms = 0;
        }
        bus_update_health(b);
        return;
    }
    n->cmd_up = 1;
    n->last_ok_ms = uv_now(b->env.loop);
    if (bus_node_up(n) || !n->serving) {
        n->backoff_ms = 0;
    }
    bus_update_health(b);
    store_on_node_up(b, n->cmd);
    if (b->cluster && (!b->map_known || !bus_healthy(b))) {
        bus_refresh_map(b);
    }
    if (n->serving) {
        b->h->cmd_up(b->ud);
    }
}

static redisAsyncContext *bus_dial(bus_node_t *n)
{
    bus_t *b = n->bus;
    redisAsyncContext *ac = redisAsyncConnect(n->host, n->port);
    if (ac == NULL) {
        return NULL;
    }
    if (ac->err) {
        log_debug("event=redis_connect_failed node=%s:%d err=\"%s\"", n->host, n->port, ac->errstr);
        redisAsyncFree(ac);
        return NULL;
    }
    ac->data = n;
    if (redisuv_attach(ac, b->env.loop) != REDIS_OK) {
        redisAsyncFree(ac);
        return NULL;
    }
    redisAsyncSetConnectCallback(ac, bus_on_connect);
    redisAsyncSetDisconnectCallback(ac, bus_on_disconnect);
    /* A queued command makes hiredis watch for writability, which is how
     * it learns that a non-blocking connect finished or failed. AUTH and
     * SELECT go first. */
    if (b->password[0] != '\0') {
        redisAsyncCommand(ac, NULL, NULL, "AUTH %s", b->password);
    }
    if (b->db != 0) {
        redisAsyncCommand(ac, NULL, NULL, "SELECT %d", b->db);
    }
    redisAsyncCommand(ac, NULL, NULL, "PING");
    n->dial_ms = uv_now(b->env.loop);
    return ac;
}

/* ---------------------------------------------------------- pub/sub */

static void bus_on_sub_up(void *ud)
{
    bus_node_t *n = ud;
    bus_t *b = n->bus;
    log_info("event=redis_up conn=sub host=%s port=%d", n->host, n->port);
    n->sub_up = 1;
    if (bus_node_up(n)) {
        n->backoff_ms = 0;
    }
    bus_update_health(b);
    b->h->sub_up(b->ud);
}

static void bus_on_sub_down(void *ud, const char *why)
{
    bus_node_t *n = ud;
    bus_t *b = n->bus;
    int was_up = n->sub_up;
    n->sub = NULL;
    n->sub_up = 0;
    bus_update_health(b);
    if (b->closing) {
        return;
    }
    if (was_up) {
        log_warn("event=redis_down conn=sub node=%s:%d err=\"%s\"", n->host, n->port, why);
        metrics_add(&bus_node_metrics(n)->reconnects, 1);
    } else {
        log_debug("event=redis_connect_failed conn=sub node=%s:%d err=\"%s\"", n->host, n->port, why);
    }
    if (n->used && n->serving) {
        bus_schedule_retry(n);
    }
    if (b->cluster) {
        bus_refresh_soon(b);
    }
    if (was_up) {
        b->h->sub_down(b->ud);
        /* Only this node's subscriptions are gone: the others'
         * resubscribe at once (a no-op for Redis) and this node's
         * when it, or the replica that replaces it, is back. */
        if (b->cluster) {
            b->h->sub_up(b->ud);
        }
    }
}

static void bus_on_sub_message(void *ud, const char *channel, size_t clen, const char *msg, size_t len)
{
    bus_node_t *n = ud;
    n->bus->h->message(n->bus->ud, channel, clen, msg, len);
}

static void bus_on_subscribed(void *ud, const char *channel, size_t clen, int on)
{
    bus_node_t *n = ud;
    n->bus->h->subscribed(n->bus->ud, channel, clen, on);
}

/* Parses "MOVED 3999 127.0.0.1:6381" / "ASK ..." into the node. */
static bus_node_t *bus_redirect_target(bus_t *b, const char *err, size_t elen, unsigned *slot)
{
    char text[300];
    if (elen >= sizeof(text)) {
        return NULL;
    }
    memcpy(text, err, elen);
    text[elen] = '\0';
    const char *sp = strchr(text, ' ');
    if (sp == NULL) {
        return NULL;
    }
    char *end;
    unsigned long s = strtoul(sp + 1, &end, 10);
    if (*end != ' ' || s >= HASHSLOT_COUNT) {
        return NULL;
    }
    const char *addr = end + 1;
    const char *colon = strrchr(addr, ':');
    if (colon == NULL) {
        return NULL;
    }
    long port = strtol(colon + 1, &end, 10);
    if (port <= 0 || port > 65535 || *end != '\0') {
        return NULL;
    }
    *slot = (unsigned)s;
    return bus_node_get(b, addr, (size_t)(colon - addr), (int)port);
}

/* Points slot at node n (a MOVED says so), and reads the whole map soon. */
static void bus_learn_moved(bus_t *b, unsigned slot, bus_node_t *n)
{
    b->slots[slot] = (uint8_t)(n->index + 1);
    if (!n->serving) {
        n->serving = 1;
        bus_node_connect(n);
    }
    bus_refresh_soon(b);
}

static void bus_on_sub_refused(void *ud, const char *channel, size_t clen, const char *err, size_t elen)
{
    bus_node_t *n = ud;
    bus_t *b = n->bus;
    unsigned slot;
    if (elen > 6 && memcmp(err, "MOVED ", 6) == 0) {
        bus_node_t *to = bus_redirect_target(b, err, elen, &slot);
        metrics_add(&bus_node_metrics(n)->redirects, 1);
        if (to != NULL) {
            bus_learn_moved(b, slot, to);
        }
    } else {
        metrics_add(&bus_node_metrics(n)->errors, 1);
        log_warn("event=redis_subscribe_refused node=%s:%d channel=%.*s err=\"%.*s\"", n->host, n->port,
                 (int)clen, channel, (int)elen, err);
        bus_refresh_soon(b);
    }
    /* Not subscribed: the layer above subscribes again, which now goes
     * where the map says (or waits for that node's link). */
    b->h->subscribed(b->ud, channel, clen, 0);
}

static const pubsub_handlers_t bus_pubsub_handlers = {
    .up = bus_on_sub_up,
    .down = bus_on_sub_down,
    .message = bus_on_sub_message,
    .subscribed = bus_on_subscribed,
    .refused = bus_on_sub_refused,
};

/* ------------------------------------------------------- connecting */

static void bus_node_connect(bus_node_t *n)
{
    bus_t *b = n->bus;
    if (b->closing || !n->used) {
        return;
    }
    if (n->cmd == NULL) {
        n->cmd = bus_dial(n);
    }
    if (b->durable && n->serving && n->dur == NULL) {
        n->dur = bus_dial(n);
    }
    if (n->serving && n->sub == NULL) {
        n->sub = pubsub_connect(b->env.loop, n->host, n->port, b->password, b->cluster,
                                &bus_pubsub_handlers, n);
        n->dial_ms = uv_now(b->env.loop);
    }
    if (n->cmd == NULL || (n->serving && (n->sub == NULL || (b->durable && n->dur == NULL)))) {
        bus_schedule_retry(n);
    }
}

/* Redialling happens on the worker's tick, so the backoff has a 1 s grain. */
static void bus_schedule_retry(bus_node_t *n)
{
    bus_t *b = n->bus;
    if (b->closing || n->retry_at_ms != 0) {
        return;
    }
    n->backoff_ms = n->backoff_ms == 0 ? BUS_BACKOFF_MIN_MS : n->backoff_ms * 2;
    if (n->backoff_ms > BUS_BACKOFF_MAX_MS) {
        n->backoff_ms = BUS_BACKOFF_MAX_MS;
    }
    /* Jitter keeps every worker of every host from redialling at once. */
    uint64_t delay = n->backoff_ms / 2 + (uint64_t)rand() % (n->backoff_ms / 2 + 1);
    n->retry_at_ms = uv_now(b->env.loop) + delay;
    log_debug("event=redis_retry_scheduled node=%s:%d delay_ms=%" PRIu64, n->host, n->port, delay);
}

/* Lets a node that no longer serves slots go: its links close, and its
 * entry is reused once they have. */
static void bus_node_retire(bus_node_t *n)
{
    n->serving = 0;
    n->retry_at_ms = 0;
    if (n->sub != NULL) {
        pubsub_t *ps = n->sub;
        int was_up = n->sub_up;
        n->sub = NULL;
        n->sub_up = 0;
        pubsub_close(ps);
        if (was_up) {
            n->bus->h->sub_down(n->bus->ud);
            n->bus->h->sub_up(n->bus->ud);
        }
    }
}

/* ------------------------------------------------------------ the map */

static void bus_refresh_soon(bus_t *b)
{
    b->refresh_at_ms = 0;
}

/*
 * CLUSTER SLOTS: [[start, end, [host, port, id], replicas...], ...].
 * Nodes that own slots become the serving set; the rest are let go once
 * the map is complete, so an old master that came back as a replica
 * stops holding subscriptions.
 */
static void bus_on_slots(redisAsyncContext *ac, void *reply, void *privdata)
{
    (void)privdata;
    bus_node_t *from = ac->data;
    bus_t *b = from->bus;
    redisReply *r = reply;
    b->map_pending = 0;
    if (b->closing) {
        return;
    }
    if (r == NULL || r->type != REDIS_REPLY_ARRAY) {
        if (r != NULL) {
            log_warn("event=redis_slots_failed node=%s:%d err=\"%.*s\"", from->host, from->port,
                     r->type == REDIS_REPLY_ERROR ? (int)r->len : 0, r->type == REDIS_REPLY_ERROR ? r->str : "");
        }
        return;
    }
    uint8_t *map = calloc(HASHSLOT_COUNT, 1);
    int serving[BUS_MAX_NODES] = { 0 };
    if (map == NULL) {
        return;
    }
    size_t covered = 0;
    for (size_t i = 0; i < r->elements; i++) {
        redisReply *e = r->element[i];
        if (e->type != REDIS_REPLY_ARRAY || e->elements < 3 || e->element[0]->type != REDIS_REPLY_INTEGER ||
            e->element[1]->type != REDIS_REPLY_INTEGER || e->element[2]->type != REDIS_REPLY_ARRAY ||
            e->element[2]->elements < 2 || e->element[2]->element[0]->type != REDIS_REPLY_STRING ||
            e->element[2]->element[1]->type != REDIS_REPLY_INTEGER) {
            continue;
        }
        long long lo = e->element[0]->integer, hi = e->element[1]->integer;
        if (lo < 0 || hi >= HASHSLOT_COUNT || lo > hi) {
            continue;
        }
        const redisReply *host = e->element[2]->element[0];
        /* An empty host means "the address you reached me on". */
        const char *h = host->len > 0 ? host->str : from->host;
        size_t hlen = host->len > 0 ? host->len : strlen(from->host);
        bus_node_t *n = bus_node_get(b, h, hlen, (int)e->element[2]->element[1]->integer);
        if (n == NULL) {
            continue;
        }
        serving[n->index] = 1;
        for (long long s = lo; s <= hi; s++) {
            map[s] = (uint8_t)(n->index + 1);
        }
        covered += (size_t)(hi - lo + 1);
    }
    if (covered == 0) {
        free(map);
        return;
    }
    memcpy(b->slots, map, HASHSLOT_COUNT);
    free(map);
    b->map_known = 1;
    b->map_at_ms = uv_now(b->env.loop);
    int complete = covered == HASHSLOT_COUNT;
    for (int i = 0; i < b->nnodes; i++) {
        bus_node_t *n = &b->nodes[i];
        if (!n->used) {
            continue;
        }
        if (serving[i] && !n->serving) {
            log_info("event=redis_node_serving node=%s:%d", n->host, n->port);
            n->serving = 1;
            bus_node_connect(n);
        } else if (serving[i] && n->serving && n->sub == NULL && n->retry_at_ms == 0) {
            bus_node_connect(n);
        } else if (!serving[i] && n->serving && complete) {
            log_info("event=redis_node_retired node=%s:%d", n->host, n->port);
            bus_node_retire(n);
        }
    }
    /* The seeds and retired nodes keep no command link once the map is
     * whole: they would only be pinged. */
    if (complete) {
        for (int i = 0; i < b->nnodes; i++) {
            bus_node_t *n = &b->nodes[i];
            if (n->used && !n->serving) {
                n->used = 0;
                n->retry_at_ms = 0;
                if (n->cmd != NULL) {
                    redisAsyncContext *c = n->cmd;
                    n->cmd_up = 0;
                    redisAsyncDisconnect(c);
                }
                if (n->dur != NULL) {
                    redisAsyncContext *c = n->dur;
                    n->dur_up = 0;
                    redisAsyncDisconnect(c);
                }
                metrics_node_t *m = bus_node_metrics(n);
                metrics_set(&m->up, 0);
                metrics_set(&m->serving, 0);
            }
        }
    }
    bus_update_health(b);
}

static int bus_parse_seeds(bus_t *b, const char *list);

static void bus_dial_seeds(bus_t *b)
{
    if (bus_parse_seeds(b, b->env.cfg->redis_cluster) != 0) {
        return;
    }
    for (int i = 0; i < b->nnodes; i++) {
        bus_node_t *n = &b->nodes[i];
        if (n->used && n->cmd == NULL && n->retry_at_ms == 0) {
            bus_node_connect(n);
        }
    }
}

static void bus_refresh_map(bus_t *b)
{
    if (b->map_pending || b->closing) {
        return;
    }
    /* Ask a serving node when there is one (it knows the newest map
     * first), else any node with a link. */
    bus_node_t *pick = NULL;
    for (int pass = 0; pass < 2 && pick == NULL; pass++) {
        for (int i = 0; i < b->nnodes; i++) {
            bus_node_t *n = &b->nodes[(i + (int)(uv_now(b->env.loop) / 1000)) % b->nnodes];
            if (n->used && n->cmd_up && (pass == 1 || n->serving)) {
                pick = n;
                break;
            }
        }
    }
    if (pick == NULL) {
        /* Every node we know is down (a one-master cluster whose master
         * died, say): ask the seeds again, which may name the replica that
         * took over. */
        bus_dial_seeds(b);
        return;
    }
    if (redisAsyncCommand(pick->cmd, bus_on_slots, NULL, "CLUSTER SLOTS") == REDIS_OK) {
        b->map_pending = 1;
        metrics_add(&bus_node_metrics(pick)->commands, 1);
    }
}

/* ------------------------------------------------------------ life */

/* redis://[[user]:password@]host[:port][/db] */
static int bus_parse_url(bus_t *b, const char *url)
{
    const char *p = url;
    if (strncmp(p, "redis://", 8) != 0) {
        return -1;
    }
    p += 8;
    const char *at = strchr(p, '@');
    if (at != NULL) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        const char *pw = colon != NULL ? colon + 1 : p;
        size_t n = (size_t)(at - pw);
        if (n >= sizeof(b->password)) {
            return -1;
        }
        memcpy(b->password, pw, n);
        b->password[n] = '\0';
        p = at + 1;
    }
    const char *end = p + strcspn(p, ":/");
    size_t hlen = (size_t)(end - p);
    int port = 6379;
    if (hlen == 0) {
        return -1;
    }
    const char *host = p;
    p = end;
    if (*p == ':') {
        char *e;
        long v = strtol(p + 1, &e, 10);
        if (v <= 0 || v > 65535) {
            return -1;
        }
        port = (int)v;
        p = e;
    }
    if (*p == '/' && p[1] != '\0') {
        char *e;
        long db = strtol(p + 1, &e, 10);
        if (db < 0 || *e != '\0') {
            return -1;
        }
        b->db = (int)db;
    }
    bus_node_t *n = bus_node_get(b, host, hlen, port);
    if (n == NULL) {
        return -1;
    }
    n->serving = 1;
    memset(b->slots, 1, sizeof(b->slots));      /* every slot: node 0 */
    b->map_known = 1;
    return 0;
}

/* HOST:PORT[,HOST:PORT...]; an IPv6 host goes in brackets. */
static int bus_parse_seeds(bus_t *b, const char *list)
{
    const char *p = list;
    int count = 0;
    while (*p != '\0') {
        size_t len = strcspn(p, ", ");
        if (len > 0) {
            const char *colon = NULL;
            for (size_t i = len; i > 0; i--) {
                if (p[i - 1] == ':') {
                    colon = p + i - 1;
                    break;
                }
            }
            if (colon == NULL) {
                return -1;
            }
            char *e;
            long port = strtol(colon + 1, &e, 10);
            if (port <= 0 || port > 65535 || e != p + len) {
                return -1;
            }
            const char *host = p;
            size_t hlen = (size_t)(colon - p);
            if (hlen >= 2 && host[0] == '[' && host[hlen - 1] == ']') {
                host++;
                hlen -= 2;
            }
            if (hlen == 0 || bus_node_get(b, host, hlen, (int)port) == NULL) {
                return -1;
            }
            count++;
        }
        p += len;
        p += strspn(p, ", ");
    }
    return count > 0 ? 0 : -1;
}

static void bus_on_wait_check(uv_check_t *check);
static void bus_on_retry_timer(uv_timer_t *t);

bus_t *bus_new(const bus_env_t *env, const char *prev_wid)
{
    bus_t *b = calloc(1, sizeof(*b));
    if (b == NULL) {
        return NULL;
    }
    b->env = *env;
    store_init(env->cfg->redis_cluster[0] != '\0');
    snprintf(b->prev_wid, sizeof(b->prev_wid), "%s", prev_wid != NULL ? prev_wid : "");
    b->cluster = env->cfg->redis_cluster[0] != '\0';
    b->durable = env->cfg->ack_replicas > 0;
    if (b->cluster) {
        /* The password of a redis:// URL, if one is given, is the cluster's. */
        const char *url = env->cfg->redis_url;
        const char *at = strchr(url, '@');
        if (strncmp(url, "redis://", 8) == 0 && at != NULL) {
            const char *colon = memchr(url + 8, ':', (size_t)(at - url - 8));
            const char *pw = colon != NULL ? colon + 1 : url + 8;
            snprintf(b->password, sizeof(b->password), "%.*s", (int)(at - pw), pw);
        }
        if (bus_parse_seeds(b, env->cfg->redis_cluster) != 0) {
            log_error("event=bad_redis_cluster seeds=\"%s\"", env->cfg->redis_cluster);
            free(b);
            return NULL;
        }
    } else if (bus_parse_url(b, env->cfg->redis_url) != 0) {
        log_error("event=bad_redis_url url=\"%s\"", env->cfg->redis_url);
        free(b);
        return NULL;
    }
    uv_check_init(env->loop, &b->wait_check);
    b->wait_check.data = b;
    uv_timer_init(env->loop, &b->retry_timer);
    b->retry_timer.data = b;
    for (int i = 0; i < b->nnodes; i++) {
        bus_node_connect(&b->nodes[i]);
    }
    return b;
}

static void bus_drop_retries(bus_t *b)
{
    while (b->retry_head != NULL) {
        bus_req_t *r = b->retry_head;
        b->retry_head = r->next;
        if (r->cb != NULL) {
            r->cb(NULL, NULL, r->privdata);
        }
        free(r);
    }
    b->retry_tail = NULL;
}

void bus_close(bus_t *b)
{
    if (b == NULL || b->closing) {
        return;
    }
    b->closing = 1;
    bus_drop_retries(b);
    uv_close((uv_handle_t *)&b->wait_check, NULL);
    uv_close((uv_handle_t *)&b->retry_timer, NULL);
    for (int i = 0; i < b->nnodes; i++) {
        bus_node_t *n = &b->nodes[i];
        bus_fail_waiters(n, 0);
        bus_fail_waiters(n, 1);
        /* A graceful disconnect lets queued writes (presence leaves) go out. */
        if (n->cmd != NULL) {
            redisAsyncDisconnect(n->cmd);
        }
        if (n->dur != NULL) {
            redisAsyncDisconnect(n->dur);
        }
        if (n->sub != NULL) {
            pubsub_close(n->sub);
            n->sub = NULL;
            n->sub_up = 0;
        }
    }
}

void bus_free(bus_t *b)
{
    if (b == NULL) {
        return;
    }
    /* The loop has run out, so hiredis has freed every context. */
    free(b);
}

/* -------------------------------------------------------- health */

int bus_healthy(const bus_t *b)
{
    if (b == NULL || !b->map_known) {
        return 0;
    }
    int any = 0;
    for (int i = 0; i < b->nnodes; i++) {
        const bus_node_t *n = &b->nodes[i];
        if (n->used && n->serving) {
            if (!bus_node_up(n)) {
                return 0;
            }
            any = 1;
        }
    }
    if (b->cluster) {
        for (size_t s = 0; s < HASHSLOT_COUNT; s++) {
            if (b->slots[s] == 0) {
                return 0;
            }
        }
    }
    return any;
}

static bus_node_t *bus_node_of_slot(const bus_t *b, unsigned slot)
{
    int i = b->slots[slot];
    if (i == 0) {
        return NULL;
    }
    bus_node_t *n = (bus_node_t *)&b->nodes[i - 1];
    return n->used ? n : NULL;
}

static bus_node_t *bus_node_of_key(const bus_t *b, const char *key, size_t len)
{
    return bus_node_of_slot(b, b->cluster ? hashslot_of(key, len) : 0);
}

int bus_ready(const bus_t *b, const char *key, size_t len)
{
    if (b == NULL || b->closing) {
        return 0;
    }
    const bus_node_t *n = bus_node_of_key(b, key, len);
    return n != NULL && bus_node_up(n);
}

int bus_describe(const bus_t *b, buf_t *out)
{
    char line[400];
    for (int i = 0; i < b->nnodes; i++) {
        const bus_node_t *n = &b->nodes[i];
        if (!n->used || !n->serving) {
            continue;
        }
        unsigned slots = 0;
        for (size_t s = 0; s < HASHSLOT_COUNT; s++) {
            slots += b->slots[s] == (uint8_t)(i + 1);
        }
        int len = snprintf(line, sizeof(line), "redis %s:%d cmd=%s sub=%s%s slots=%u\n", n->host, n->port,
                           n->cmd_up ? "up" : "down", n->sub_up ? "up" : "down",
                           !b->durable ? "" : n->dur_up ? " dur=up" : " dur=down", slots);
        if (len < 0 || buf_append(out, line, (size_t)len) != 0) {
            return -1;
        }
    }
    return 0;
}

static void bus_on_ping(redisAsyncContext *ac, void *reply, void *privdata)
{
    (void)privdata;
    bus_node_t *n = ac->data;
    n->ping_sent_ms = 0;
    if (reply != NULL) {
        n->last_ok_ms = uv_now(n->bus->env.loop);
    }
}

/* Gives up a command link still dialling (up is its flag), to dial again. */
static void bus_cut_dial(bus_node_t *n, redisAsyncContext **link, int up, const char *name)
{
    if (*link == NULL || up) {
        return;
    }
    log_warn("event=redis_connect_timeout conn=%s node=%s:%d", name, n->host, n->port);
    redisAsyncContext *ac = *link;
    *link = NULL;
    redisAsyncFree(ac);
    bus_schedule_retry(n);
}

static void bus_node_tick(bus_node_t *n, uint64_t now)
{
    if (n->retry_at_ms != 0 && now >= n->retry_at_ms) {
        n->retry_at_ms = 0;
        bus_node_connect(n);
    }
    /* A dial that neither succeeds nor fails (packets dropped) is cut. */
    if (now - n->dial_ms > BUS_STALL_MS) {
        bus_cut_dial(n, &n->cmd, n->cmd_up, "cmd");
        bus_cut_dial(n, &n->dur, n->dur_up, "dur");
        if (n->sub != NULL && !n->sub_up) {
            log_warn("event=redis_connect_timeout conn=sub node=%s:%d", n->host, n->port);
            pubsub_t *ps = n->sub;
            n->sub = NULL;
            pubsub_close(ps);
            bus_schedule_retry(n);
        }
    }
    if (n->cmd_up) {
        if (n->ping_sent_ms != 0 && now - n->ping_sent_ms > BUS_STALL_MS) {
            log_warn("event=redis_stalled node=%s:%d waited_ms=%" PRIu64, n->host, n->port, now - n->ping_sent_ms);
            /* Freeing fails every pending callback with NULL, which answers
             * the waiting clients "unavailable", then redials. The durable
             * link goes too: it is the same stuck Redis. */
            if (n->dur != NULL) {
                redisAsyncFree(n->dur);
            }
            redisAsyncFree(n->cmd);
            return;
        }
        if (n->ping_sent_ms == 0) {
            n->ping_sent_ms = now;
            redisAsyncCommand(n->cmd, bus_on_ping, NULL, "PING");
        }
    }
}

void bus_tick(bus_t *b)
{
    if (b == NULL || b->closing) {
        return;
    }
    uint64_t now = uv_now(b->env.loop);
    for (int i = 0; i < b->nnodes; i++) {
        bus_node_t *n = &b->nodes[i];
        if (n->used) {
            bus_node_tick(n, now);
        }
    }
    if (b->cluster) {
        uint64_t every = bus_healthy(b) ? BUS_REFRESH_MS : BUS_REFRESH_DEGRADED_MS;
        if (b->refresh_at_ms == 0 || now >= b->refresh_at_ms) {
            b->refresh_at_ms = now + every;
            bus_refresh_map(b);
        }
    }
    bus_update_health(b);
    store_tick(b);
}

/* -------------------------------------------------------- commands */

static int bus_send_link(bus_node_t *n, int durable, bus_cb_t *cb, void *privdata, int argc,
                         const char **argv, const size_t *lens)
{
    if (n == NULL || !(durable ? n->dur_up : n->cmd_up)) {
        return -1;
    }
    if (redisAsyncCommandArgv(durable ? n->dur : n->cmd, cb, privdata, argc, argv, lens) != REDIS_OK) {
        return -1;
    }
    metrics_add(&bus_node_metrics(n)->commands, 1);
    return 0;
}

static void bus_on_req_reply(redisAsyncContext *ac, void *reply, void *privdata);

/* Sends req to where it should go now. Returns 0 when sent. */
static int bus_req_send(bus_req_t *req)
{
    bus_t *b = req->bus;
    if (req->ask_node >= 0) {
        bus_node_t *n = &b->nodes[req->ask_node];
        req->ask_node = -1;
        const char *asking[] = { "ASKING" };
        size_t alen[] = { 6 };
        if (bus_send_link(n, req->durable, NULL, NULL, 1, asking, alen) != 0) {
            return -1;
        }
        return bus_send_link(n, req->durable, bus_on_req_reply, req, req->argc, req->argv, req->lens);
    }
    return bus_send_link(bus_node_of_slot(b, req->slot), req->durable, bus_on_req_reply, req, req->argc,
                         req->argv, req->lens);
}

static void bus_req_finish(bus_req_t *req, redisAsyncContext *ac, void *reply)
{
    if (req->cb != NULL) {
        req->cb(ac, reply, req->privdata);
    }
    free(req);
}

static void bus_on_retry_timer(uv_timer_t *t)
{
    bus_t *b = t->data;
    bus_req_t *list = b->retry_head;
    b->retry_head = b->retry_tail = NULL;
    while (list != NULL) {
        bus_req_t *req = list;
        list = req->next;
        if (bus_req_send(req) != 0) {
            bus_req_finish(req, NULL, NULL);
        }
    }
}

static void bus_on_req_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    bus_req_t *req = privdata;
    bus_t *b = req->bus;
    redisReply *r = reply;
    if (r == NULL || r->type != REDIS_REPLY_ERROR || b->closing) {
        bus_req_finish(req, ac, reply);
        return;
    }
    bus_node_t *at = ac->data;
    int moved = r->len > 6 && memcmp(r->str, "MOVED ", 6) == 0;
    int ask = r->len > 4 && memcmp(r->str, "ASK ", 4) == 0;
    if ((moved || ask) && req->redirects < BUS_MAX_REDIRECTS) {
        metrics_add(&bus_node_metrics(at)->redirects, 1);
        unsigned slot;
        bus_node_t *to = bus_redirect_target(b, r->str, r->len, &slot);
        if (to != NULL) {
            req->redirects++;
            if (moved) {
                bus_learn_moved(b, slot, to);
            } else {
                req->ask_node = to->index;
            }
            if (bus_req_send(req) == 0) {
                return;
            }
            /* The new node's link is not up yet: as good as lost. */
            bus_req_finish(req, ac, NULL);
            return;
        }
    }
    if (r->len >= 8 && memcmp(r->str, "TRYAGAIN", 8) == 0 && req->tries < BUS_MAX_TRYAGAIN) {
        /* The slot is moving and its keys are on both sides for a moment. */
        req->tries++;
        req->next = NULL;
        if (b->retry_tail != NULL) {
            b->retry_tail->next = req;
        } else {
            b->retry_head = req;
        }
        b->retry_tail = req;
        if (!uv_is_active((uv_handle_t *)&b->retry_timer)) {
            uv_timer_start(&b->retry_timer, bus_on_retry_timer, BUS_TRYAGAIN_MS, 0);
        }
        return;
    }
    metrics_add(&bus_node_metrics(at)->errors, 1);
    if (r->len >= 11 && memcmp(r->str, "CLUSTERDOWN", 11) == 0) {
        bus_refresh_soon(b);
    }
    bus_req_finish(req, ac, reply);
}

static int bus_command_link(bus_t *b, int durable, const char *key, size_t keylen, bus_cb_t *cb,
                            void *privdata, int argc, const char **argv, const size_t *argvlen)
{
    if (b == NULL || b->closing) {
        return -1;
    }
    durable = durable && b->durable;
    if (!b->cluster) {
        return bus_send_link(&b->nodes[0], durable, cb, privdata, argc, argv, argvlen);
    }
    bus_node_t *n = bus_node_of_key(b, key, keylen);
    if (n == NULL || !(durable ? n->dur_up : n->cmd_up)) {
        return -1;
    }
    size_t bytes = 0;
    for (int i = 0; i < argc; i++) {
        bytes += argvlen[i];
    }
    /* One block: the request, argv, lens, then the argument bytes. */
    bus_req_t *req = malloc(sizeof(*req) + (size_t)argc * (sizeof(char *) + sizeof(size_t)) + bytes);
    if (req == NULL) {
        return -1;
    }
    req->bus = b;
    req->cb = cb;
    req->privdata = privdata;
    req->slot = hashslot_of(key, keylen);
    req->redirects = 0;
    req->tries = 0;
    req->ask_node = -1;
    req->durable = durable;
    req->next = NULL;
    req->argc = argc;
    req->argv = (const char **)(req + 1);
    req->lens = (size_t *)(req->argv + argc);
    char *p = (char *)(req->lens + argc);
    for (int i = 0; i < argc; i++) {
        memcpy(p, argv[i], argvlen[i]);
        req->argv[i] = p;
        req->lens[i] = argvlen[i];
        p += argvlen[i];
    }
    if (bus_send_link(n, durable, bus_on_req_reply, req, argc, req->argv, req->lens) != 0) {
        free(req);
        return -1;
    }
    return 0;
}

int bus_command(bus_t *b, const char *key, size_t keylen, bus_cb_t *cb, void *privdata,
                int argc, const char **argv, const size_t *argvlen)
{
    return bus_command_link(b, 0, key, keylen, cb, privdata, argc, argv, argvlen);
}

int bus_command_durable(bus_t *b, const char *key, size_t keylen, bus_cb_t *cb, void *privdata,
                        int argc, const char **argv, const size_t *argvlen)
{
    return bus_command_link(b, 1, key, keylen, cb, privdata, argc, argv, argvlen);
}

int bus_command_node(bus_t *b, redisAsyncContext *ac, bus_cb_t *cb, void *privdata,
                     int argc, const char **argv, const size_t *argvlen)
{
    if (b == NULL || b->closing || ac == NULL) {
        return -1;
    }
    bus_node_t *n = ac->data;
    return bus_send_link(n, ac == n->dur, cb, privdata, argc, argv, argvlen);
}

/* ------------------------------------------------------------- WAIT */

typedef struct {
    bus_waiter_t *waiters;      /* oldest first */
    int n;
} bus_wait_batch_t;

static void bus_on_wait_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    (void)ac;
    bus_wait_batch_t *batch = privdata;
    redisReply *r = reply;
    long long got = r != NULL && r->type == REDIS_REPLY_INTEGER ? r->integer : -1;
    bus_waiter_t *w = batch->waiters;
    while (w != NULL) {
        bus_waiter_t *next = w->next;
        w->cb(w->arg, got >= w->n);
        free(w);
        w = next;
    }
    free(batch);
}

static void bus_on_wait_check(uv_check_t *check)
{
    bus_t *b = check->data;
    uv_check_stop(check);
    for (int i = 0; i < 2 * b->nnodes; i++) {
        bus_node_t *n = &b->nodes[i / 2];
        int link = i % 2;
        if (n->waiters[link] == NULL) {
            continue;
        }
        /* Reverse into arrival order; the WAIT asks for the most anyone
         * asked for, and gives everyone the same answer. */
        bus_waiter_t *list = NULL;
        int need = 0, timeout = 0;
        for (bus_waiter_t *w = n->waiters[link], *next; w != NULL; w = next) {
            next = w->next;
            w->next = list;
            list = w;
            need = w->n > need ? w->n : need;
            timeout = w->timeout_ms > timeout ? w->timeout_ms : timeout;
        }
        n->waiters[link] = NULL;
        bus_wait_batch_t *batch = malloc(sizeof(*batch));
        char sn[16], st[16];
        snprintf(sn, sizeof(sn), "%d", need);
        snprintf(st, sizeof(st), "%d", timeout);
        const char *argv[] = { "WAIT", sn, st };
        size_t lens[] = { 4, strlen(sn), strlen(st) };
        if (batch != NULL) {
            batch->waiters = list;
            batch->n = need;
            if (bus_send_link(n, link, bus_on_wait_reply, batch, 3, argv, lens) == 0) {
                continue;
            }
            free(batch);
        }
        for (bus_waiter_t *w = list, *next; w != NULL; w = next) {
            next = w->next;
            w->cb(w->arg, 0);
            free(w);
        }
    }
}

int bus_wait(bus_t *b, redisAsyncContext *ac, int n, int timeout_ms, bus_wait_cb_t *cb, void *arg)
{
    if (b == NULL || b->closing || ac == NULL) {
        return -1;
    }
    bus_node_t *node = ac->data;
    int link = ac == node->dur;
    bus_waiter_t *w = malloc(sizeof(*w));
    if (w == NULL) {
        return -1;
    }
    w->cb = cb;
    w->arg = arg;
    w->n = n;
    w->timeout_ms = timeout_ms;
    w->next = node->waiters[link];
    node->waiters[link] = w;
    if (!uv_is_active((uv_handle_t *)&b->wait_check)) {
        uv_check_start(&b->wait_check, bus_on_wait_check);
    }
    return 0;
}

/* ---------------------------------------------------------- pub/sub */

static int bus_sub(bus_t *b, const char *channel, size_t len, int on)
{
    if (b == NULL || b->closing) {
        return -1;
    }
    bus_node_t *n = bus_node_of_key(b, channel, len);
    if (n == NULL || !n->sub_up) {
        return -1;
    }
    return pubsub_subscribe(n->sub, channel, len, on);
}

int bus_subscribe(bus_t *b, const char *channel, size_t len)
{
    return bus_sub(b, channel, len, 1);
}

int bus_unsubscribe(bus_t *b, const char *channel, size_t len)
{
    return bus_sub(b, channel, len, 0);
}
