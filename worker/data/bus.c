#include "bus.h"
#include "store.h"
#include "redisuv.h"
#include "../../common/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>

#define BUS_BACKOFF_MIN_MS 1000
#define BUS_BACKOFF_MAX_MS 5000
/* A command unanswered this long means Redis is stuck: drop and redial. */
#define BUS_STALL_MS 10000

struct bus_s {
    bus_env_t env;
    const bus_handlers_t *h;
    void *ud;
    redisAsyncContext *cmd;
    redisAsyncContext *sub;
    int cmd_up;
    int sub_up;
    int closing;
    uint64_t retry_at_ms;       /* when to redial; 0 when nothing is scheduled */
    uint64_t dial_ms;           /* when the last dial started */
    uint64_t backoff_ms;
    uint64_t ping_sent_ms;      /* 0 when no health ping is outstanding */
    uint64_t last_ok_ms;
    char host[256];
    int port;
    char password[256];
    int db;
    char prev_wid[128];
};

const bus_env_t *bus_env(const bus_t *b)
{
    return &b->env;
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
    if (hlen == 0 || hlen >= sizeof(b->host)) {
        return -1;
    }
    memcpy(b->host, p, hlen);
    b->host[hlen] = '\0';
    b->port = 6379;
    p = end;
    if (*p == ':') {
        char *e;
        long port = strtol(p + 1, &e, 10);
        if (port <= 0 || port > 65535) {
            return -1;
        }
        b->port = (int)port;
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
    return 0;
}

static void bus_schedule_retry(bus_t *b);

static void bus_update_health(bus_t *b)
{
    metrics_set(&b->env.metrics->slot[b->env.slot].redis_up, (uint64_t)bus_healthy(b));
}

static void bus_on_disconnect(const redisAsyncContext *ac, int status)
{
    bus_t *b = ac->data;
    int was_sub = ac == b->sub;
    if (was_sub) {
        b->sub = NULL;
        b->sub_up = 0;
    } else {
        b->cmd = NULL;
        b->cmd_up = 0;
        b->ping_sent_ms = 0;
    }
    if (!b->closing) {
        log_warn("event=redis_down conn=%s err=\"%s\"", was_sub ? "sub" : "cmd",
                 status == REDIS_OK ? "closed" : (ac->errstr[0] ? ac->errstr : "error"));
        if (was_sub) {
            b->h->sub_down(b->ud);
        }
        bus_schedule_retry(b);
    }
    bus_update_health(b);
}

static void bus_on_connect(const redisAsyncContext *ac, int status)
{
    bus_t *b = ac->data;
    int is_sub = ac == b->sub;
    if (status != REDIS_OK) {
        /* hiredis frees the context after this callback. */
        if (is_sub) {
            b->sub = NULL;
        } else {
            b->cmd = NULL;
        }
        if (!b->closing) {
            log_debug("event=redis_connect_failed conn=%s err=\"%s\"", is_sub ? "sub" : "cmd", ac->errstr);
            bus_schedule_retry(b);
        }
        return;
    }
    log_info("event=redis_up conn=%s host=%s port=%d", is_sub ? "sub" : "cmd", b->host, b->port);
    if (is_sub) {
        b->sub_up = 1;
    } else {
        b->cmd_up = 1;
        b->last_ok_ms = uv_now(b->env.loop);
    }
    if (b->cmd_up && b->sub_up) {
        b->backoff_ms = 0;
    }
    bus_update_health(b);
    if (is_sub) {
        b->h->sub_up(b->ud);
    } else {
        store_on_bus_up(b);
        b->h->cmd_up(b->ud);
    }
}

static redisAsyncContext *bus_dial(bus_t *b)
{
    redisAsyncContext *ac = redisAsyncConnect(b->host, b->port);
    if (ac == NULL) {
        return NULL;
    }
    if (ac->err) {
        log_debug("event=redis_connect_failed err=\"%s\"", ac->errstr);
        redisAsyncFree(ac);
        return NULL;
    }
    ac->data = b;
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
    b->dial_ms = uv_now(b->env.loop);
    return ac;
}

static void bus_connect(bus_t *b)
{
    if (b->closing) {
        return;
    }
    if (b->cmd == NULL) {
        b->cmd = bus_dial(b);
    }
    if (b->sub == NULL) {
        b->sub = bus_dial(b);
    }
    if (b->cmd == NULL || b->sub == NULL) {
        bus_schedule_retry(b);
    }
}

/* Redialling happens on the worker's tick, so the backoff has a 1 s grain. */
static void bus_schedule_retry(bus_t *b)
{
    if (b->closing || b->retry_at_ms != 0) {
        return;
    }
    b->backoff_ms = b->backoff_ms == 0 ? BUS_BACKOFF_MIN_MS : b->backoff_ms * 2;
    if (b->backoff_ms > BUS_BACKOFF_MAX_MS) {
        b->backoff_ms = BUS_BACKOFF_MAX_MS;
    }
    /* Jitter keeps every worker of every host from redialling at once. */
    uint64_t delay = b->backoff_ms / 2 + (uint64_t)rand() % (b->backoff_ms / 2 + 1);
    b->retry_at_ms = uv_now(b->env.loop) + delay;
    log_debug("event=redis_retry_scheduled delay_ms=%llu", (unsigned long long)delay);
}

bus_t *bus_new(const bus_env_t *env, const char *prev_wid)
{
    bus_t *b = calloc(1, sizeof(*b));
    if (b == NULL) {
        return NULL;
    }
    b->env = *env;
    store_init();
    snprintf(b->prev_wid, sizeof(b->prev_wid), "%s", prev_wid != NULL ? prev_wid : "");
    if (bus_parse_url(b, env->cfg->redis_url) != 0) {
        log_error("event=bad_redis_url url=\"%s\"", env->cfg->redis_url);
        free(b);
        return NULL;
    }
    bus_connect(b);
    return b;
}

void bus_close(bus_t *b)
{
    if (b == NULL || b->closing) {
        return;
    }
    b->closing = 1;
    /* A graceful disconnect lets queued writes (presence leaves) go out. */
    if (b->cmd != NULL) {
        redisAsyncDisconnect(b->cmd);
    }
    if (b->sub != NULL) {
        redisAsyncDisconnect(b->sub);
    }
}

void bus_free(bus_t *b)
{
    if (b == NULL) {
        return;
    }
    /* The loop has run out, so hiredis has freed both contexts. */
    free(b);
}

int bus_healthy(const bus_t *b)
{
    return b != NULL && b->cmd_up && b->sub_up;
}

static void bus_on_ping(redisAsyncContext *ac, void *reply, void *privdata)
{
    (void)privdata;
    bus_t *b = ac->data;
    b->ping_sent_ms = 0;
    if (reply != NULL) {
        b->last_ok_ms = uv_now(b->env.loop);
    }
}

void bus_tick(bus_t *b)
{
    if (b == NULL || b->closing) {
        return;
    }
    uint64_t now = uv_now(b->env.loop);
    if (b->retry_at_ms != 0 && now >= b->retry_at_ms) {
        b->retry_at_ms = 0;
        bus_connect(b);
    }
    /* A dial that neither succeeds nor fails (packets dropped) is cut. */
    if (now - b->dial_ms > BUS_STALL_MS) {
        if (b->cmd != NULL && !b->cmd_up) {
            log_warn("event=redis_connect_timeout conn=cmd");
            redisAsyncFree(b->cmd);
            b->cmd = NULL;
            bus_schedule_retry(b);
        }
        if (b->sub != NULL && !b->sub_up) {
            log_warn("event=redis_connect_timeout conn=sub");
            redisAsyncFree(b->sub);
            b->sub = NULL;
            bus_schedule_retry(b);
        }
    }
    if (b->cmd_up) {
        if (b->ping_sent_ms != 0 && now - b->ping_sent_ms > BUS_STALL_MS) {
            log_warn("event=redis_stalled waited_ms=%llu", (unsigned long long)(now - b->ping_sent_ms));
            /* Freeing fails every pending callback with NULL, which answers
             * the waiting clients "unavailable", then redials. */
            redisAsyncContext *ac = b->cmd;
            redisAsyncFree(ac);
            return;
        }
        if (b->ping_sent_ms == 0) {
            b->ping_sent_ms = now;
            redisAsyncCommand(b->cmd, bus_on_ping, NULL, "PING");
        }
        store_tick(b);
    }
}

int bus_command(bus_t *b, bus_cb_t *cb, void *privdata, int argc, const char **argv,
                const size_t *argvlen)
{
    if (b == NULL || !b->cmd_up || b->closing) {
        return -1;
    }
    return redisAsyncCommandArgv(b->cmd, cb, privdata, argc, argv, argvlen) == REDIS_OK ? 0 : -1;
}

static void bus_on_sub_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    (void)privdata;
    redisReply *r = reply;
    if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements < 3 ||
        r->element[0]->type != REDIS_REPLY_STRING || r->element[1]->type != REDIS_REPLY_STRING) {
        return;
    }
    bus_t *b = ac->data;
    const char *kind = r->element[0]->str;
    const redisReply *channel = r->element[1];
    if (strcmp(kind, "message") == 0 && r->element[2]->type == REDIS_REPLY_STRING) {
        b->h->message(b->ud, channel->str, channel->len, r->element[2]->str, r->element[2]->len);
    } else if (strcmp(kind, "subscribe") == 0) {
        b->h->subscribed(b->ud, channel->str, channel->len, 1);
    } else if (strcmp(kind, "unsubscribe") == 0) {
        b->h->subscribed(b->ud, channel->str, channel->len, 0);
    }
}

int bus_subscribe(bus_t *b, const char *channel, size_t len)
{
    if (b == NULL || !b->sub_up || b->closing) {
        return -1;
    }
    return redisAsyncCommand(b->sub, bus_on_sub_reply, NULL, "SUBSCRIBE %b", channel, len) == REDIS_OK ? 0 : -1;
}

int bus_unsubscribe(bus_t *b, const char *channel, size_t len)
{
    if (b == NULL || !b->sub_up || b->closing) {
        return -1;
    }
    return redisAsyncCommand(b->sub, bus_on_sub_reply, NULL, "UNSUBSCRIBE %b", channel, len) == REDIS_OK ? 0 : -1;
}
