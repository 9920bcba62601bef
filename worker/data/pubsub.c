#include "pubsub.h"
#include "../../common/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>

enum { PS_RESOLVING, PS_CONNECTING, PS_UP, PS_CLOSING };

/* A subscribe or unsubscribe sent and not yet answered. */
typedef struct {
    char *channel;
    size_t len;
    int on;
} pubsub_pending_t;

typedef struct {
    uv_write_t req;
    char *cmd;                  /* hiredis-formatted, freed by redisFreeCommand */
} pubsub_write_t;

struct pubsub_s {
    uv_loop_t *loop;
    const pubsub_handlers_t *h;
    void *ud;
    int state;
    int sharded;
    int handshake_left;         /* AUTH and PING replies still to come */
    int gai_active;             /* the resolver still holds ps */
    int tcp_open;               /* tcp was initialised and not yet closed */
    uv_getaddrinfo_t gai;
    uv_connect_t connect;
    uv_tcp_t tcp;
    redisReader *reader;
    pubsub_pending_t *pending;  /* ring of sent commands awaiting answers */
    size_t phead, pcount, pcap;
    int port;
    char host[256];
    char password[256];
    char rbuf[64 * 1024];
};

static void pubsub_maybe_free(pubsub_t *ps)
{
    if (ps->gai_active || ps->tcp_open) {
        return;
    }
    for (size_t i = 0; i < ps->pcount; i++) {
        free(ps->pending[(ps->phead + i) % ps->pcap].channel);
    }
    free(ps->pending);
    if (ps->reader != NULL) {
        redisReaderFree(ps->reader);
    }
    free(ps);
}

static void pubsub_on_close(uv_handle_t *handle)
{
    pubsub_t *ps = handle->data;
    ps->tcp_open = 0;
    pubsub_maybe_free(ps);
}

static void pubsub_shut(pubsub_t *ps)
{
    ps->state = PS_CLOSING;
    if (ps->tcp_open && !uv_is_closing((uv_handle_t *)&ps->tcp)) {
        uv_close((uv_handle_t *)&ps->tcp, pubsub_on_close);
    }
    pubsub_maybe_free(ps);
}

/* Reports the loss once, then lets the object go. */
static void pubsub_fail(pubsub_t *ps, const char *why)
{
    if (ps->state == PS_CLOSING) {
        return;
    }
    ps->state = PS_CLOSING;
    ps->h->down(ps->ud, why);
    pubsub_shut(ps);
}

void pubsub_close(pubsub_t *ps)
{
    if (ps == NULL || ps->state == PS_CLOSING) {
        return;
    }
    pubsub_shut(ps);
}

static void pubsub_on_write(uv_write_t *req, int status)
{
    pubsub_write_t *w = (pubsub_write_t *)req;
    pubsub_t *ps = req->data;
    redisFreeCommand(w->cmd);
    free(w);
    if (status < 0 && status != UV_ECANCELED) {
        pubsub_fail(ps, uv_strerror(status));
    }
}

static int pubsub_send(pubsub_t *ps, int argc, const char **argv, const size_t *lens)
{
    pubsub_write_t *w = malloc(sizeof(*w));
    if (w == NULL) {
        return -1;
    }
    int n = redisFormatCommandArgv(&w->cmd, argc, argv, lens);
    if (n < 0) {
        free(w);
        return -1;
    }
    w->req.data = ps;
    uv_buf_t buf = uv_buf_init(w->cmd, (unsigned)n);
    int rc = uv_write(&w->req, (uv_stream_t *)&ps->tcp, &buf, 1, pubsub_on_write);
    if (rc != 0) {
        redisFreeCommand(w->cmd);
        free(w);
        return -1;
    }
    return 0;
}

static int pubsub_push_pending(pubsub_t *ps, const char *channel, size_t len, int on)
{
    if (ps->pcount == ps->pcap) {
        size_t cap = ps->pcap == 0 ? 16 : ps->pcap * 2;
        pubsub_pending_t *p = malloc(cap * sizeof(*p));
        if (p == NULL) {
            return -1;
        }
        for (size_t i = 0; i < ps->pcount; i++) {
            p[i] = ps->pending[(ps->phead + i) % ps->pcap];
        }
        free(ps->pending);
        ps->pending = p;
        ps->phead = 0;
        ps->pcap = cap;
    }
    char *copy = malloc(len + 1);
    if (copy == NULL) {
        return -1;
    }
    memcpy(copy, channel, len);
    copy[len] = '\0';
    ps->pending[(ps->phead + ps->pcount) % ps->pcap] = (pubsub_pending_t){ copy, len, on };
    ps->pcount++;
    return 0;
}

/* Drops the oldest pending command if it is (on, channel); with channel
 * NULL, whatever it is. Returns 1 when one was dropped. Its channel is
 * copied to out (outlen bytes) when out is not NULL. */
static int pubsub_pop_pending(pubsub_t *ps, const char *channel, size_t len, int on,
                              char *out, size_t outlen, size_t *outn)
{
    if (ps->pcount == 0) {
        return 0;
    }
    pubsub_pending_t *p = &ps->pending[ps->phead];
    if (channel != NULL && (p->on != on || p->len != len || memcmp(p->channel, channel, len) != 0)) {
        return 0;
    }
    if (out != NULL) {
        size_t n = p->len < outlen ? p->len : outlen;
        memcpy(out, p->channel, n);
        *outn = n;
    }
    free(p->channel);
    ps->phead = (ps->phead + 1) % ps->pcap;
    ps->pcount--;
    return 1;
}

int pubsub_subscribe(pubsub_t *ps, const char *channel, size_t len, int on)
{
    if (ps == NULL || ps->state != PS_UP) {
        return -1;
    }
    const char *verb = ps->sharded ? (on ? "SSUBSCRIBE" : "SUNSUBSCRIBE") : (on ? "SUBSCRIBE" : "UNSUBSCRIBE");
    const char *argv[] = { verb, channel };
    size_t lens[] = { strlen(verb), len };
    if (pubsub_push_pending(ps, channel, len, on) != 0) {
        return -1;
    }
    if (pubsub_send(ps, 2, argv, lens) != 0) {
        /* Undo the newest entry: the ring's tail. */
        ps->pcount--;
        free(ps->pending[(ps->phead + ps->pcount) % ps->pcap].channel);
        return -1;
    }
    return 0;
}

static void pubsub_on_reply(pubsub_t *ps, const redisReply *r)
{
    /* The answers to AUTH and PING come first: nothing was sent before. */
    if (ps->handshake_left > 0) {
        ps->handshake_left--;
        if (r->type == REDIS_REPLY_ERROR) {
            log_warn("event=redis_sub_refused host=%s port=%d err=\"%.*s\"", ps->host, ps->port,
                     (int)r->len, r->str);
            pubsub_fail(ps, "handshake refused");
        }
        return;
    }
    if (r->type == REDIS_REPLY_ERROR) {
        char chan[512];
        size_t n = 0;
        if (pubsub_pop_pending(ps, NULL, 0, 0, chan, sizeof(chan), &n)) {
            ps->h->refused(ps->ud, chan, n, r->str, r->len);
        }
        return;
    }
    if (r->type != REDIS_REPLY_ARRAY || r->elements < 3 || r->element[0]->type != REDIS_REPLY_STRING ||
        r->element[1]->type != REDIS_REPLY_STRING) {
        return;
    }
    const char *kind = r->element[0]->str;
    if (ps->sharded) {
        if (kind[0] != 's') {
            return;
        }
        kind++;
    }
    const redisReply *ch = r->element[1];
    if (strcmp(kind, "message") == 0 && r->element[2]->type == REDIS_REPLY_STRING) {
        ps->h->message(ps->ud, ch->str, ch->len, r->element[2]->str, r->element[2]->len);
    } else if (strcmp(kind, "subscribe") == 0) {
        pubsub_pop_pending(ps, ch->str, ch->len, 1, NULL, 0, NULL);
        ps->h->subscribed(ps->ud, ch->str, ch->len, 1);
    } else if (strcmp(kind, "unsubscribe") == 0) {
        /* Also unasked: Cluster ends the subscriptions of a slot that
         * moved to another node. */
        pubsub_pop_pending(ps, ch->str, ch->len, 0, NULL, 0, NULL);
        ps->h->subscribed(ps->ud, ch->str, ch->len, 0);
    }
}

static void pubsub_on_alloc(uv_handle_t *handle, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    pubsub_t *ps = handle->data;
    *buf = uv_buf_init(ps->rbuf, sizeof(ps->rbuf));
}

static void pubsub_on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    pubsub_t *ps = stream->data;
    if (nread < 0) {
        pubsub_fail(ps, nread == UV_EOF ? "closed" : uv_strerror((int)nread));
        return;
    }
    if (nread == 0 || ps->state == PS_CLOSING) {
        return;
    }
    if (redisReaderFeed(ps->reader, buf->base, (size_t)nread) != REDIS_OK) {
        pubsub_fail(ps, "out of memory");
        return;
    }
    while (ps->state != PS_CLOSING) {
        void *reply = NULL;
        if (redisReaderGetReply(ps->reader, &reply) != REDIS_OK) {
            pubsub_fail(ps, "protocol error");
            return;
        }
        if (reply == NULL) {
            break;
        }
        pubsub_on_reply(ps, reply);
        freeReplyObject(reply);
    }
}

static void pubsub_on_connect(uv_connect_t *req, int status)
{
    pubsub_t *ps = req->data;
    if (ps->state == PS_CLOSING) {
        return;
    }
    if (status < 0) {
        pubsub_fail(ps, uv_strerror(status));
        return;
    }
    uv_tcp_nodelay(&ps->tcp, 1);
    uv_tcp_keepalive(&ps->tcp, 1, 30);
    int rc = uv_read_start((uv_stream_t *)&ps->tcp, pubsub_on_alloc, pubsub_on_read);
    if (rc != 0) {
        pubsub_fail(ps, uv_strerror(rc));
        return;
    }
    ps->handshake_left = 1;
    if (ps->password[0] != '\0') {
        const char *argv[] = { "AUTH", ps->password };
        size_t lens[] = { 4, strlen(ps->password) };
        if (pubsub_send(ps, 2, argv, lens) != 0) {
            pubsub_fail(ps, "out of memory");
            return;
        }
        ps->handshake_left++;
    }
    const char *argv[] = { "PING" };
    size_t lens[] = { 4 };
    if (pubsub_send(ps, 1, argv, lens) != 0) {
        pubsub_fail(ps, "out of memory");
        return;
    }
    /* Up now, as the command link is: subscriptions queue behind AUTH and
     * PING on the socket, and a refused AUTH ends the link from the reply. */
    ps->state = PS_UP;
    ps->h->up(ps->ud);
}

static int pubsub_dial(pubsub_t *ps, const struct sockaddr *addr)
{
    int rc = uv_tcp_init(ps->loop, &ps->tcp);
    if (rc != 0) {
        return rc;
    }
    ps->tcp_open = 1;
    ps->tcp.data = ps;
    ps->connect.data = ps;
    ps->state = PS_CONNECTING;
    return uv_tcp_connect(&ps->connect, &ps->tcp, addr, pubsub_on_connect);
}

static void pubsub_on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    pubsub_t *ps = req->data;
    ps->gai_active = 0;
    if (ps->state == PS_CLOSING) {
        uv_freeaddrinfo(res);
        pubsub_maybe_free(ps);
        return;
    }
    if (status < 0) {
        pubsub_fail(ps, uv_strerror(status));
        return;
    }
    int rc = pubsub_dial(ps, res->ai_addr);
    uv_freeaddrinfo(res);
    if (rc != 0) {
        pubsub_fail(ps, uv_strerror(rc));
    }
}

pubsub_t *pubsub_connect(uv_loop_t *loop, const char *host, int port, const char *password,
                         int sharded, const pubsub_handlers_t *h, void *ud)
{
    pubsub_t *ps = calloc(1, sizeof(*ps));
    if (ps == NULL) {
        return NULL;
    }
    ps->reader = redisReaderCreate();
    if (ps->reader == NULL) {
        free(ps);
        return NULL;
    }
    ps->loop = loop;
    ps->h = h;
    ps->ud = ud;
    ps->sharded = sharded;
    ps->port = port;
    snprintf(ps->host, sizeof(ps->host), "%s", host);
    snprintf(ps->password, sizeof(ps->password), "%s", password);
    /* An address needs no resolver (the usual case: Cluster announces
     * addresses); the connect then starts at once, like the command
     * link's, and a failure is reported from the loop. */
    struct sockaddr_storage ss;
    if (uv_ip4_addr(host, port, (struct sockaddr_in *)&ss) == 0 ||
        uv_ip6_addr(host, port, (struct sockaddr_in6 *)&ss) == 0) {
        int rc = pubsub_dial(ps, (const struct sockaddr *)&ss);
        if (rc != 0) {
            if (ps->tcp_open) {
                ps->state = PS_CLOSING;
                uv_close((uv_handle_t *)&ps->tcp, pubsub_on_close);
                return NULL;    /* freed by the close callback */
            }
            redisReaderFree(ps->reader);
            free(ps);
            return NULL;
        }
        return ps;
    }
    ps->state = PS_RESOLVING;
    ps->gai.data = ps;
    char service[16];
    snprintf(service, sizeof(service), "%d", port);
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM };
    /* Resolved off the loop: a slow resolver must not stall the worker. */
    if (uv_getaddrinfo(loop, &ps->gai, pubsub_on_resolved, host, service, &hints) != 0) {
        redisReaderFree(ps->reader);
        free(ps);
        return NULL;
    }
    ps->gai_active = 1;
    return ps;
}
