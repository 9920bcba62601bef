#include "store.h"
#include "bus.h"
#include "../../common/log.h"
#include "../../proto/proto.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/sha.h>

/* Heartbeat period of a worker in Redis, and how old a heartbeat may get
 * before the worker counts as dead and its presence entries are reaped. */
#define STORE_HEARTBEAT_MS 2000
#define STORE_DEAD_AFTER_MS 15000
#define STORE_REAP_EVERY_MS 5000

/*
 * KEYS: seq, log, dedup, archive stream, archived cursor.
 * ARGV: payload head ('{"room":"R","seq":'), tail, dedup window (s), log
 * cap, channel, "1" when the message has an id, "1" when archiving, room.
 * The dedup entry is checked first so a resend never takes a new seq.
 * With the archive, a room whose counter is missing (a new room, or Redis
 * lost its data) answers {-1}: the worker seeds the counter from MongoDB's
 * highest seq and sends again. The recent log is then trimmed only below
 * what MongoDB has stored, and never below the recovery window.
 */
static const char store_send_lua[] =
    "local d = ARGV[6] == '1' and redis.call('GET', KEYS[3])\n"
    "if d then\n"
    "  local s, t = string.match(d, '^(%d+):(%d+)$')\n"
    "  return {tonumber(s), tonumber(t), 1}\n"
    "end\n"
    "local archive = ARGV[7] == '1'\n"
    "if archive and redis.call('EXISTS', KEYS[1]) == 0 then return {-1, 0, 0} end\n"
    "local seq = redis.call('INCR', KEYS[1])\n"
    "local tm = redis.call('TIME')\n"
    "local ms = tonumber(tm[1]) * 1000 + math.floor(tonumber(tm[2]) / 1000)\n"
    "local us = tm[1] .. string.format('%06d', tonumber(tm[2]))\n"
    "local p = ARGV[1] .. seq .. ',\"ts\":' .. string.format('%d', ms) .. ',' .. ARGV[2]\n"
    "if archive then\n"
    "  redis.call('XADD', KEYS[2], seq .. '-1', 'm', p)\n"
    "  redis.call('XADD', KEYS[4], '*', 'r', ARGV[8], 'm', p)\n"
    "  local done = tonumber(redis.call('GET', KEYS[5]) or '0')\n"
    "  local keep = math.min(done + 1, seq - tonumber(ARGV[4]) + 1)\n"
    "  if keep > 1 then redis.call('XTRIM', KEYS[2], 'MINID', '~', keep .. '-0') end\n"
    "else\n"
    "  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], seq .. '-1', 'm', p)\n"
    "end\n"
    "if ARGV[6] == '1' then\n"
    "  redis.call('SET', KEYS[3], seq .. ':' .. string.format('%d', ms), 'EX', ARGV[3])\n"
    "end\n"
    "redis.call('PUBLISH', ARGV[5], 'C' .. seq .. ' ' .. us .. ' ' .. p)\n"
    "return {seq, ms, 0}\n";

/* KEYS: users hash, worker set. ARGV: user, "room\nuser", member-events,
 * channel, frame, wid, joined (1/0). SADD/SREM make it idempotent, so it
 * also serves to re-assert presence after an outage. */
static const char store_member_lua[] =
    "local tm = redis.call('TIME')\n"
    "local now = tonumber(tm[1]) * 1000\n"
    "local limit = tonumber(ARGV[3])\n"
    "if ARGV[7] == '1' then\n"
    "  if redis.call('SADD', KEYS[2], ARGV[2]) == 0 then return 0 end\n"
    "  redis.call('ZADD', 'chatd:workers', now, ARGV[6])\n"
    "  local n = redis.call('HINCRBY', KEYS[1], ARGV[1], 1)\n"
    "  if n == 1 and redis.call('HLEN', KEYS[1]) <= limit then\n"
    "    redis.call('PUBLISH', ARGV[4], 'X' .. ARGV[1] .. '\\n' .. ARGV[5])\n"
    "  end\n"
    "  return n\n"
    "end\n"
    "if redis.call('SREM', KEYS[2], ARGV[2]) == 0 then return 0 end\n"
    "local n = redis.call('HINCRBY', KEYS[1], ARGV[1], -1)\n"
    "if n <= 0 then\n"
    "  redis.call('HDEL', KEYS[1], ARGV[1])\n"
    "  if redis.call('HLEN', KEYS[1]) + 1 <= limit then\n"
    "    redis.call('PUBLISH', ARGV[4], 'X' .. ARGV[1] .. '\\n' .. ARGV[5])\n"
    "  end\n"
    "end\n"
    "return n\n";

/* ARGV: a wid to reap ("" = every worker silent for ARGV[2] ms), the
 * dead-after time, member-events. Decrements what each dead worker held
 * and announces the users who are gone. */
static const char store_reap_lua[] =
    "local tm = redis.call('TIME')\n"
    "local now = tonumber(tm[1]) * 1000\n"
    "local dead\n"
    "if ARGV[1] ~= '' then dead = {ARGV[1]} else\n"
    "  dead = redis.call('ZRANGEBYSCORE', 'chatd:workers', '-inf', now - tonumber(ARGV[2]), 'LIMIT', 0, 10)\n"
    "end\n"
    "local limit = tonumber(ARGV[3])\n"
    "for _, wid in ipairs(dead) do\n"
    "  local set = 'chatd:w:' .. wid\n"
    "  for _, e in ipairs(redis.call('SMEMBERS', set)) do\n"
    "    local nl = string.find(e, '\\n', 1, true)\n"
    "    if nl then\n"
    "      local room = string.sub(e, 1, nl - 1)\n"
    "      local user = string.sub(e, nl + 1)\n"
    "      local h = 'chatd:{' .. room .. '}:u'\n"
    "      local n = redis.call('HINCRBY', h, user, -1)\n"
    "      if n <= 0 then\n"
    "        redis.call('HDEL', h, user)\n"
    "        if redis.call('HLEN', h) + 1 <= limit then\n"
    "          local f = cjson.encode({type = 'member', payload = {room = room, user = user, event = 'leave'}})\n"
    "          redis.call('PUBLISH', 'chatd:{' .. room .. '}', 'X' .. user .. '\\n' .. f)\n"
    "        end\n"
    "      end\n"
    "    end\n"
    "  end\n"
    "  redis.call('DEL', set)\n"
    "  redis.call('ZREM', 'chatd:workers', wid)\n"
    "end\n"
    "return #dead\n";

/*
 * The scripts run by EVALSHA: Redis then neither receives nor hashes the
 * script's text on every message. Their SHA-1s are computed once per
 * process (store_init) and never change after, and every new command
 * connection loads them first (store_on_bus_up). A Redis that forgot them
 * while connected (SCRIPT FLUSH) answers NOSCRIPT, and the call is sent
 * again once as EVAL, which also loads it; calls in flight at that moment
 * may then be stored in another order than sent (never lost or doubled).
 */
enum { STORE_SEND, STORE_MEMBER, STORE_REAP, STORE_NSCRIPTS };

static struct {
    const char *lua;
    char sha[41];
} store_scripts[STORE_NSCRIPTS] = {
    [STORE_SEND] = { store_send_lua, "" },
    [STORE_MEMBER] = { store_member_lua, "" },
    [STORE_REAP] = { store_reap_lua, "" },
};

void store_init(void)
{
    for (int i = 0; i < STORE_NSCRIPTS; i++) {
        if (store_scripts[i].sha[0] != '\0') {
            continue;
        }
        unsigned char md[SHA_DIGEST_LENGTH];
        SHA1((const unsigned char *)store_scripts[i].lua, strlen(store_scripts[i].lua), md);
        for (int k = 0; k < SHA_DIGEST_LENGTH; k++) {
            snprintf(store_scripts[i].sha + 2 * k, 3, "%02x", md[k]);
        }
    }
}

typedef struct {
    store_cb_t *cb;             /* may be NULL */
    void *arg;
    bus_t *bus;
    int script;                 /* the script an EVALSHA ran, or -1 */
    int argc;                   /* the EVALSHA's arguments after the SHA, owned */
    const char **argv;
    size_t *lens;
} store_call_t;

static int store_send_call(store_call_t *call, int argc, const char **argv, const size_t *lens);

#define STORE_MAX_ARGS 64

/* Sends the call's script as cmd (EVALSHA with the SHA-1, or EVAL with the
 * text) followed by its kept arguments. Returns 0 when sent. */
static int store_send_script(store_call_t *call, const char *cmd, const char *script, size_t slen)
{
    const char *argv[STORE_MAX_ARGS];
    size_t lens[STORE_MAX_ARGS];
    argv[0] = cmd;
    lens[0] = strlen(cmd);
    argv[1] = script;
    lens[1] = slen;
    memcpy(argv + 2, call->argv, (size_t)call->argc * sizeof(*argv));
    memcpy(lens + 2, call->lens, (size_t)call->argc * sizeof(*lens));
    return store_send_call(call, call->argc + 2, argv, lens);
}

/* Sends an EVALSHA call again as EVAL (once). Returns 0 when sent. */
static int store_resend_eval(store_call_t *call)
{
    const char *lua = store_scripts[call->script].lua;
    call->script = -1;
    return store_send_script(call, "EVAL", lua, strlen(lua));
}

static void store_call_free(store_call_t *call)
{
    free(call->argv);       /* argv, lens and their bytes are one block */
    free(call);
}

static void store_on_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    (void)ac;
    store_call_t *call = privdata;
    redisReply *r = reply;
    if (r != NULL && r->type == REDIS_REPLY_ERROR && call->script >= 0 &&
        strncmp(r->str, "NOSCRIPT", 8) == 0) {
        if (store_resend_eval(call) == 0) {
            return;
        }
        r = NULL;       /* Redis went away meanwhile */
    }
    /* BUSYGROUP is the expected answer when another worker made the
     * archive's consumer group first. */
    if (r != NULL && r->type == REDIS_REPLY_ERROR && strncmp(r->str, "BUSYGROUP", 9) != 0) {
        log_warn("event=redis_error err=\"%.*s\"", (int)r->len, r->str);
    }
    if (call->cb != NULL) {
        call->cb(call->arg, r);
    }
    store_call_free(call);
}

static int store_send_call(store_call_t *call, int argc, const char **argv, const size_t *lens)
{
    return bus_command(call->bus, store_on_reply, call, argc, argv, lens);
}

int store_call(bus_t *b, store_cb_t *cb, void *arg, int argc,
                      const char **argv, const size_t *lens)
{
    if (cb == NULL) {
        return bus_command(b, NULL, NULL, argc, argv, lens);
    }
    store_call_t *call = calloc(1, sizeof(*call));
    if (call == NULL) {
        return -1;
    }
    call->cb = cb;
    call->arg = arg;
    call->bus = b;
    call->script = -1;
    if (store_send_call(call, argc, argv, lens) != 0) {
        free(call);
        return -1;
    }
    return 0;
}

/*
 * Runs one of store_scripts by EVALSHA; argv is what follows the script
 * (numkeys, keys, arguments). cb may be NULL. Returns 0 when sent, -1 when
 * Redis is unavailable (cb not called).
 */
static int store_eval(bus_t *b, int script, store_cb_t *cb, void *arg, int argc,
                      const char **argv, const size_t *lens)
{
    if (argc + 2 > STORE_MAX_ARGS) {
        return -1;
    }
    size_t bytes = 0;
    for (int i = 0; i < argc; i++) {
        bytes += lens[i];
    }
    /* The arguments are kept (one block) for a resend as EVAL. */
    store_call_t *call = calloc(1, sizeof(*call));
    char *block = malloc((size_t)argc * (sizeof(char *) + sizeof(size_t)) + bytes + 1);
    if (call == NULL || block == NULL) {
        free(call);
        free(block);
        return -1;
    }
    call->cb = cb;
    call->arg = arg;
    call->bus = b;
    call->script = script;
    call->argc = argc;
    call->argv = (const char **)block;
    call->lens = (size_t *)(block + (size_t)argc * sizeof(char *));
    char *p = block + (size_t)argc * (sizeof(char *) + sizeof(size_t));
    for (int i = 0; i < argc; i++) {
        memcpy(p, argv[i], lens[i]);
        call->argv[i] = p;
        call->lens[i] = lens[i];
        p += lens[i];
    }
    if (store_send_script(call, "EVALSHA", store_scripts[script].sha, 40) != 0) {
        store_call_free(call);
        return -1;
    }
    return 0;
}

size_t store_channel(const char *room, char *out, size_t outlen)
{
    int n = snprintf(out, outlen, "chatd:{%s}", room);
    return n < 0 ? 0 : (size_t)n;
}

static void store_key(char *out, size_t outlen, const char *room, const char *suffix)
{
    snprintf(out, outlen, "chatd:{%s}:%s", room, suffix);
}

int store_send(bus_t *b, const char *room, const char *sender, const char *id,
               const char *tail, store_cb_t *cb, void *arg)
{
    char kseq[160], klog[160], chan[160], head[200], win[24], cap[24];
    store_key(kseq, sizeof(kseq), room, "seq");
    store_key(klog, sizeof(klog), room, "log");
    store_channel(room, chan, sizeof(chan));
    snprintf(head, sizeof(head), "{\"room\":\"%s\",\"seq\":", room);
    snprintf(win, sizeof(win), "%d", bus_env(b)->cfg->dedup_window);
    snprintf(cap, sizeof(cap), "%d", bus_env(b)->cfg->recovery_window);
    /* The sender's length goes first so that no (sender, id) pair can
     * spell another's key. Without an id there is nothing to dedup. */
    char kdedup[400];
    snprintf(kdedup, sizeof(kdedup), "chatd:{%s}:d:%zu:%s:%s", room, strlen(sender), sender,
             id != NULL ? id : "");
    char karch[160];
    store_key(karch, sizeof(karch), room, "archived");
    const char *argv[] = { "5", kseq, klog, kdedup, "chatd:archive", karch,
                           head, tail, win, cap, chan, id != NULL ? "1" : "0",
                           bus_env(b)->cfg->mongo_uri[0] != '\0' ? "1" : "0", room };
    size_t lens[14];
    for (int i = 0; i < 14; i++) {
        lens[i] = strlen(argv[i]);
    }
    return store_eval(b, STORE_SEND, cb, arg, 14, argv, lens);
}

int store_range(bus_t *b, const char *room, int64_t from, int64_t to, long count,
                store_cb_t *cb, void *arg)
{
    char klog[160], a[32], z[32], n[24];
    store_key(klog, sizeof(klog), room, "log");
    snprintf(a, sizeof(a), "%" PRId64 "-0", from);
    if (to < 0) {
        snprintf(z, sizeof(z), "+");
    } else {
        snprintf(z, sizeof(z), "%" PRId64 "-1", to);
    }
    snprintf(n, sizeof(n), "%ld", count);
    const char *argv[] = { "XRANGE", klog, a, z, "COUNT", n };
    size_t lens[6];
    for (int i = 0; i < 6; i++) {
        lens[i] = strlen(argv[i]);
    }
    return store_call(b, cb, arg, 6, argv, lens);
}

int store_history(bus_t *b, const char *room, int64_t before, long count,
                  store_cb_t *cb, void *arg)
{
    char klog[160], a[32], n[24];
    store_key(klog, sizeof(klog), room, "log");
    if (before < 0) {
        snprintf(a, sizeof(a), "+");
    } else {
        snprintf(a, sizeof(a), "%" PRId64 "-0", before);
    }
    snprintf(n, sizeof(n), "%ld", count);
    /* "<before>-0" sorts below "<before>-1", the entry of seq before. */
    const char *argv[] = { "XREVRANGE", klog, a, "-", "COUNT", n };
    size_t lens[6];
    for (int i = 0; i < 6; i++) {
        lens[i] = strlen(argv[i]);
    }
    return store_call(b, cb, arg, 6, argv, lens);
}

int store_seed_seq(bus_t *b, const char *room, int64_t seq, store_cb_t *cb, void *arg)
{
    char kseq[160], v[24];
    store_key(kseq, sizeof(kseq), room, "seq");
    snprintf(v, sizeof(v), "%" PRId64, seq);
    const char *argv[] = { "SET", kseq, v, "NX" };
    size_t lens[] = { 3, strlen(kseq), strlen(v), 2 };
    return store_call(b, cb, arg, 4, argv, lens);
}

void store_set_archived(bus_t *b, const char *room, int64_t seq)
{
    char karch[160], v[24];
    store_key(karch, sizeof(karch), room, "archived");
    snprintf(v, sizeof(v), "%" PRId64, seq);
    const char *argv[] = { "EVAL",
        "if tonumber(redis.call('GET', KEYS[1]) or '0') < tonumber(ARGV[1]) then "
        "redis.call('SET', KEYS[1], ARGV[1]) end", "1", karch, v };
    size_t lens[5];
    for (int i = 0; i < 5; i++) {
        lens[i] = strlen(argv[i]);
    }
    store_call(b, NULL, NULL, 5, argv, lens);
}

int store_last_seq(bus_t *b, const char *room, store_cb_t *cb, void *arg)
{
    char kseq[160];
    store_key(kseq, sizeof(kseq), room, "seq");
    const char *argv[] = { "GET", kseq };
    size_t lens[] = { 3, strlen(kseq) };
    return store_call(b, cb, arg, 2, argv, lens);
}

int store_presence(bus_t *b, const char *room, store_cb_t *cb, void *arg)
{
    char ku[160];
    store_key(ku, sizeof(ku), room, "u");
    const char *argv[] = { "HKEYS", ku };
    size_t lens[] = { 5, strlen(ku) };
    return store_call(b, cb, arg, 2, argv, lens);
}

void store_member(bus_t *b, const char *room, const char *user, int joined)
{
    char ku[160], kw[200], chan[160], entry[256], limit[24];
    store_key(ku, sizeof(ku), room, "u");
    snprintf(kw, sizeof(kw), "chatd:w:%s", bus_env(b)->wid);
    store_channel(room, chan, sizeof(chan));
    snprintf(entry, sizeof(entry), "%s\n%s", room, user);
    snprintf(limit, sizeof(limit), "%d", bus_env(b)->cfg->member_events);
    char *frame = proto_encode_member(room, user, joined);
    if (frame == NULL) {
        return;
    }
    const char *argv[] = { "2", ku, kw, user, entry, limit, chan,
                           frame, bus_env(b)->wid, joined ? "1" : "0" };
    size_t lens[10];
    for (int i = 0; i < 10; i++) {
        lens[i] = strlen(argv[i]);
    }
    if (store_eval(b, STORE_MEMBER, NULL, NULL, 10, argv, lens) != 0) {
        /* Redis is down: presence is re-asserted when it returns. */
        log_debug("event=presence_deferred room=%s user=%s", room, user);
    }
    free(frame);
}

void store_typing(bus_t *b, const char *room, const char *user, int active)
{
    char chan[160];
    store_channel(room, chan, sizeof(chan));
    char *frame = proto_encode_typing(room, user, active);
    if (frame == NULL) {
        return;
    }
    buf_t msg = { 0 };
    if (buf_append(&msg, "X", 1) == 0 && buf_append(&msg, user, strlen(user)) == 0 &&
        buf_append(&msg, "\n", 1) == 0 && buf_append(&msg, frame, strlen(frame)) == 0) {
        const char *argv[] = { "PUBLISH", chan, msg.data };
        size_t lens[] = { 7, strlen(chan), msg.len };
        store_call(b, NULL, NULL, 3, argv, lens);
    }
    buf_free(&msg);
    free(frame);
}

int store_entry(const redisReply *e, int64_t *seq, const char **payload, size_t *len)
{
    if (e->type != REDIS_REPLY_ARRAY || e->elements != 2 ||
        e->element[0]->type != REDIS_REPLY_STRING || e->element[1]->type != REDIS_REPLY_ARRAY ||
        e->element[1]->elements != 2 || e->element[1]->element[1]->type != REDIS_REPLY_STRING) {
        return -1;
    }
    char *end;
    long long s = strtoll(e->element[0]->str, &end, 10);
    if (*end != '-' || s <= 0) {
        return -1;
    }
    *seq = s;
    *payload = e->element[1]->element[1]->str;
    *len = e->element[1]->element[1]->len;
    return 0;
}

static void store_reap(bus_t *b, const char *wid)
{
    char dead_after[24], limit[24];
    snprintf(dead_after, sizeof(dead_after), "%d", STORE_DEAD_AFTER_MS);
    snprintf(limit, sizeof(limit), "%d", bus_env(b)->cfg->member_events);
    const char *argv[] = { "0", wid, dead_after, limit };
    size_t lens[4];
    for (int i = 0; i < 4; i++) {
        lens[i] = strlen(argv[i]);
    }
    store_eval(b, STORE_REAP, NULL, NULL, 4, argv, lens);
}

static void store_heartbeat(bus_t *b)
{
    const char *argv[] = { "EVAL",
        "local t = redis.call('TIME') redis.call('ZADD', 'chatd:workers', tonumber(t[1]) * 1000, ARGV[1])",
        "0", bus_env(b)->wid };
    size_t lens[4];
    for (int i = 0; i < 4; i++) {
        lens[i] = strlen(argv[i]);
    }
    store_call(b, NULL, NULL, 4, argv, lens);
}

void store_on_bus_up(bus_t *b)
{
    /* The scripts are loaded before anything else runs on this connection:
     * commands on one connection run in order, so no EVALSHA sent after
     * this can miss them. Without it, the first chats after a (re)connect
     * would all answer NOSCRIPT, and their one-by-one EVAL resends could
     * overtake each other, storing one sender's messages out of the order
     * it sent them. */
    for (int i = 0; i < STORE_NSCRIPTS; i++) {
        const char *argv[] = { "SCRIPT", "LOAD", store_scripts[i].lua };
        size_t lens[] = { 6, 4, strlen(store_scripts[i].lua) };
        store_call(b, NULL, NULL, 3, argv, lens);
    }
    store_heartbeat(b);
    if (bus_prev_wid(b)[0] != '\0') {
        log_info("event=reap_predecessor wid=%s", bus_prev_wid(b));
        store_reap(b, bus_prev_wid(b));
        bus_forget_prev_wid(b);
    }
}

void store_tick(bus_t *b)
{
    static const int ticks_per_heartbeat = STORE_HEARTBEAT_MS / 1000;
    static const int ticks_per_reap = STORE_REAP_EVERY_MS / 1000;
    /* Derived from the loop clock, so the tick keeps no counter. */
    uint64_t sec = uv_now(bus_env(b)->loop) / 1000;
    if (sec % (uint64_t)ticks_per_heartbeat == 0) {
        store_heartbeat(b);
    }
    if (sec % (uint64_t)ticks_per_reap == (uint64_t)bus_env(b)->slot % (uint64_t)ticks_per_reap) {
        store_reap(b, "");
    }
}

void store_retire(bus_t *b)
{
    store_reap(b, bus_env(b)->wid);
}
