/*
 * chat-load: a load generator for chatd, on libuv, so that the tool is not
 * the bottleneck. One process opens at most ~19,000 sockets here (a hard
 * file limit), so a run is split over --procs processes, each with its own
 * loop; they share one anonymous mapping for counters and histograms, which
 * the parent reads to print a progress line every second and the final
 * JSON report.
 *
 * Scenarios:
 *   idle    open --conns connections, join --rooms rooms, hold --duration s
 *   fanout  the same, and --senders of them send --rate messages/s each;
 *           every message carries its send time, so receivers measure the
 *           delivery latency; seqs are checked for loss, duplicates, order
 *   churn   fanout while receivers disconnect and come back at
 *           --churn-rate per second, joining with since: every message
 *           must still arrive exactly once, in order, across the seams
 *   ramp    fanout with the rate raised every --step-seconds by
 *           --rate-step until the delivery p99 passes --p99-bound-ms
 *
 * With a wss:// URL every client speaks TLS (OpenSSL over memory BIOs,
 * a full handshake per connection: no session resumption, as a crowd of
 * first-time clients would), so TLS and plain runs compare.
 *
 * It talks only to loopback unless --allow-remote is given, and it always
 * stops by itself after its duration.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <uv.h>
#include <netinet/in.h>
#include <sys/socket.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24   /* Linux 4.2 */
#endif

#define LOAD_MAX_PROCS 64
#define LOAD_MAX_ROOMS 65536
#define LOAD_MAX_STEPS 32
#define LOAD_SUB_BITS 5
#define LOAD_BUCKETS ((40 - LOAD_SUB_BITS + 1) << LOAD_SUB_BITS)

typedef struct {
    uint32_t count[LOAD_BUCKETS];
} hist_t;

/* One child's counters; written by that child only. */
typedef struct {
    volatile int ready;             /* every client joined (or failed) */
    volatile int done;
    uint64_t attempted, established, failed, closed_by_server;
    uint64_t churned, unrecovered;  /* churn: reconnects, and joins not recovered */
    uint64_t sent, acked, errors, received, duplicates, gaps;
    uint64_t acked_room[LOAD_MAX_ROOMS];
    hist_t connect_us;
    hist_t ack_us;
    hist_t delivery_us[LOAD_MAX_STEPS];
} child_stats_t;

typedef struct {
    volatile int go;                /* senders may start */
    volatile int stop;              /* senders stop */
    volatile int quit;              /* children close and exit */
    volatile int step;              /* ramp step (histogram index) */
    volatile double rate;           /* per-sender messages/s */
    child_stats_t child[LOAD_MAX_PROCS];
} shared_t;

typedef struct {
    char host[64];
    int port;
    char scenario[16];
    int conns, rooms, senders, procs, duration, size;
    double rate, rate_step, p99_bound_ms;
    int step_seconds;
    int connect_rate;
    int nsrc;
    int allow_remote;
    double churn_rate;              /* reconnects per second (churn) */
    int server_pid;
    int tls;                        /* wss:// */
    char json[512];
} opts_t;

/* ---------------------------------------------------------------------- */

static uint64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static int hist_index(uint64_t v)
{
    if (v < (1u << LOAD_SUB_BITS)) {
        return (int)v;
    }
    int msb = 63 - __builtin_clzll(v);
    if (msb > 39) {
        msb = 39;
        v = (1ull << 40) - 1;
    }
    int shift = msb - LOAD_SUB_BITS;
    return ((shift + 1) << LOAD_SUB_BITS) + (int)((v >> shift) & ((1u << LOAD_SUB_BITS) - 1));
}

static uint64_t hist_value(int idx)
{
    if (idx < (1 << LOAD_SUB_BITS)) {
        return (uint64_t)idx;
    }
    int shift = (idx >> LOAD_SUB_BITS) - 1;
    uint64_t sub = (uint64_t)(idx & ((1 << LOAD_SUB_BITS) - 1));
    /* The bucket's upper edge: a percentile never under-reports. */
    return ((sub | (1u << LOAD_SUB_BITS)) << shift) + ((1ull << shift) - 1);
}

static void hist_add(hist_t *h, uint64_t v)
{
    __atomic_fetch_add(&h->count[hist_index(v)], 1, __ATOMIC_RELAXED);
}

static void hist_merge(hist_t *into, const hist_t *h)
{
    for (int i = 0; i < LOAD_BUCKETS; i++) {
        into->count[i] += __atomic_load_n(&h->count[i], __ATOMIC_RELAXED);
    }
}

static uint64_t hist_total(const hist_t *h)
{
    uint64_t n = 0;
    for (int i = 0; i < LOAD_BUCKETS; i++) {
        n += h->count[i];
    }
    return n;
}

/* The q-quantile in microseconds, 0 when empty. */
static double hist_quantile(const hist_t *h, double q)
{
    uint64_t n = hist_total(h);
    if (n == 0) {
        return 0;
    }
    uint64_t want = (uint64_t)ceil(q * (double)n);
    if (want == 0) {
        want = 1;
    }
    uint64_t seen = 0;
    for (int i = 0; i < LOAD_BUCKETS; i++) {
        seen += h->count[i];
        if (seen >= want) {
            return (double)hist_value(i);
        }
    }
    return (double)hist_value(LOAD_BUCKETS - 1);
}

static double hist_max(const hist_t *h)
{
    for (int i = LOAD_BUCKETS - 1; i >= 0; i--) {
        if (h->count[i] != 0) {
            return (double)hist_value(i);
        }
    }
    return 0;
}

/* ---------------------------------------------------------------------- */
/* The child: clients on one libuv loop. */

enum { CL_CONNECTING, CL_HANDSHAKE, CL_UPGRADING, CL_OPEN, CL_JOINED, CL_DEAD };

typedef struct client_s {
    uv_tcp_t tcp;
    uv_connect_t creq;
    int idx;                        /* global index */
    int room;
    int sender;
    int state;
    uint64_t t_start;
    char *ibuf;                     /* a partial frame or HTTP answer */
    size_t ilen, icap;
    int64_t last_seq;
    uint64_t nsent;
    double credit;                  /* messages due (sender pacing) */
    int rejoin;                     /* churned: reconnect and join with since */
    SSL *ssl;                       /* wss:// only */
    BIO *rbio, *wbio;               /* its memory BIOs (the SSL owns them) */
} client_t;

typedef struct {
    const opts_t *o;
    shared_t *sh;
    child_stats_t *st;
    uv_loop_t *loop;
    client_t *clients;
    int first, count;               /* global indexes [first, first+count) */
    int next_connect;
    double connect_credit;          /* connections due (connect pacing) */
    int *senders;                   /* indexes of this process's senders */
    int nsenders;
    int settled;                    /* joined or dead */
    uv_timer_t tick;
    uint64_t last_tick_us;
    double churn_credit;
    struct sockaddr_in target;
    char readbuf[256 * 1024];
    char *pad;
    uint32_t rng;
    SSL_CTX *tls_ctx;               /* wss:// only */
    char plain[16384];              /* one record's plaintext */
} child_t;

static child_t g;   /* one per process: the child's loop state */

static uint32_t child_rand(void)
{
    g.rng ^= g.rng << 13;
    g.rng ^= g.rng >> 17;
    g.rng ^= g.rng << 5;
    return g.rng;
}

static void client_start(client_t *c);

static void client_on_close(uv_handle_t *h)
{
    client_t *c = h->data;
    /* A churned client comes back at once, as a reconnecting app would. */
    if (c != NULL && c->rejoin && !g.sh->quit) {
        c->ilen = 0;
        client_start(c);
    }
}

static void client_kill(client_t *c, int failed)
{
    if (c->state == CL_DEAD) {
        return;
    }
    int was_settled = c->state == CL_JOINED;
    if (c->state != CL_JOINED && failed) {
        __atomic_fetch_add(&g.st->failed, 1, __ATOMIC_RELAXED);
    }
    c->state = CL_DEAD;
    if (!was_settled) {
        g.settled++;
    }
    if (c->ssl != NULL) {
        SSL_free(c->ssl);
        c->ssl = NULL;
    }
    if (!uv_is_closing((uv_handle_t *)&c->tcp)) {
        uv_close((uv_handle_t *)&c->tcp, client_on_close);
    }
}

/* Writes what OpenSSL produced to the socket; 0, or -1 when the socket
 * did not take it all (the client then gives up, as for plain). */
static int client_tls_flush(client_t *c)
{
    char buf[65536];
    int n;
    while ((n = BIO_read(c->wbio, buf, sizeof(buf))) > 0) {
        uv_buf_t b = uv_buf_init(buf, (unsigned)n);
        if (uv_try_write((uv_stream_t *)&c->tcp, &b, 1) != n) {
            return -1;
        }
    }
    return 0;
}

/* Writes bytes as they are (plain) or as TLS records. Returns 0 or -1. */
static int client_write(client_t *c, const char *data, size_t len)
{
    if (c->ssl == NULL) {
        uv_buf_t b = uv_buf_init((char *)data, (unsigned)len);
        return uv_try_write((uv_stream_t *)&c->tcp, &b, 1) == (int)len ? 0 : -1;
    }
    if (SSL_write(c->ssl, data, (int)len) != (int)len) {
        return -1;
    }
    return client_tls_flush(c);
}

/* Sends one masked client frame (RFC 6455 requires clients to mask). */
static void client_send(client_t *c, int opcode, const char *data, size_t len)
{
    char stackbuf[2048];
    size_t hlen = len < 126 ? 6 : len < 65536 ? 8 : 14;
    char *f = hlen + len <= sizeof(stackbuf) ? stackbuf : malloc(hlen + len);
    if (f == NULL) {
        return;
    }
    f[0] = (char)(0x80 | opcode);
    if (len < 126) {
        f[1] = (char)(0x80 | len);
    } else if (len < 65536) {
        f[1] = (char)(0x80 | 126);
        f[2] = (char)(len >> 8);
        f[3] = (char)len;
    } else {
        f[1] = (char)(0x80 | 127);
        for (int i = 0; i < 8; i++) {
            f[2 + i] = (char)(len >> (56 - 8 * i));
        }
    }
    uint32_t key = child_rand();
    unsigned char *mk = (unsigned char *)f + hlen - 4;
    memcpy(mk, &key, 4);
    for (size_t i = 0; i < len; i++) {
        f[hlen + i] = (char)(data[i] ^ mk[i & 3]);
    }
    if (client_write(c, f, hlen + len) != 0) {
        /* The server is not reading fast enough for even one frame: the
         * socket buffer is full; this client gives up rather than queue. */
        client_kill(c, 0);
    }
    if (f != stackbuf) {
        free(f);
    }
}

static void client_send_text(client_t *c, const char *s)
{
    client_send(c, 1, s, strlen(s));
}

/* Finds "key": in a JSON text and parses the integer after it. */
static int json_int(const char *s, size_t len, const char *key, int64_t *out)
{
    char pat[32];
    int n = snprintf(pat, sizeof(pat), "\"%s\":", key);
    const char *p = memmem(s, len, pat, (size_t)n);
    if (p == NULL) {
        return -1;
    }
    *out = strtoll(p + n, NULL, 10);
    return 0;
}

static void client_join(client_t *c)
{
    char msg[160];
    if (c->rejoin) {
        snprintf(msg, sizeof(msg), "{\"type\":\"join\",\"payload\":{\"room\":\"load-%d\",\"since\":%" PRId64 "}}",
                 c->room, c->last_seq);
    } else {
        snprintf(msg, sizeof(msg), "{\"type\":\"join\",\"payload\":{\"room\":\"load-%d\"}}", c->room);
    }
    client_send_text(c, msg);
}

static void client_on_text(client_t *c, const char *s, size_t len)
{
    uint64_t now = now_us();
    if (len > 18 && memcmp(s, "{\"type\":\"chat\"", 14) == 0) {
        int64_t seq = 0;
        if (json_int(s, len, "seq", &seq) != 0) {
            return;
        }
        __atomic_fetch_add(&g.st->received, 1, __ATOMIC_RELAXED);
        if (seq <= c->last_seq) {
            __atomic_fetch_add(&g.st->duplicates, 1, __ATOMIC_RELAXED);
            return;
        }
        if (c->last_seq >= 0 && seq != c->last_seq + 1) {
            __atomic_fetch_add(&g.st->gaps, 1, __ATOMIC_RELAXED);
        }
        c->last_seq = seq;
        const char *p = memmem(s, len, "\"content\":\"", 11);
        if (p != NULL) {
            uint64_t t = strtoull(p + 11, NULL, 10);
            if (t != 0 && now >= t) {
                hist_add(&g.st->delivery_us[g.sh->step], now - t);
            }
        }
        return;
    }
    if (len > 17 && memcmp(s, "{\"type\":\"ack\"", 13) == 0) {
        const char *p = memmem(s, len, "\"id\":\"", 6);
        int64_t room = c->room;
        __atomic_fetch_add(&g.st->acked, 1, __ATOMIC_RELAXED);
        __atomic_fetch_add(&g.st->acked_room[room], 1, __ATOMIC_RELAXED);
        if (p != NULL) {
            uint64_t t = strtoull(p + 6, NULL, 10);
            if (t != 0 && now >= t) {
                hist_add(&g.st->ack_us, now - t);
            }
        }
        return;
    }
    if (len > 19 && memcmp(s, "{\"type\":\"joined\"", 16) == 0) {
        int64_t seq = 0;
        json_int(s, len, "seq", &seq);
        if (c->rejoin) {
            /* The replay that follows continues from last_seq: any gap or
             * repeat at the seam shows in the seq checks. */
            if (memmem(s, len, "\"recovered\":true", 16) == NULL) {
                __atomic_fetch_add(&g.st->unrecovered, 1, __ATOMIC_RELAXED);
                c->last_seq = seq;
            }
            c->rejoin = 0;
            c->state = CL_JOINED;
            return;
        }
        c->last_seq = seq;
        if (c->state == CL_OPEN) {
            c->state = CL_JOINED;
            g.settled++;
        }
        return;
    }
    if (len > 20 && memcmp(s, "{\"type\":\"welcome\"", 17) == 0) {
        c->state = CL_OPEN;
        if (!c->rejoin) {
            __atomic_fetch_add(&g.st->established, 1, __ATOMIC_RELAXED);
        }
        hist_add(&g.st->connect_us, now - c->t_start);
        client_join(c);
        return;
    }
    if (len > 18 && memcmp(s, "{\"type\":\"error\"", 15) == 0) {
        __atomic_fetch_add(&g.st->errors, 1, __ATOMIC_RELAXED);
    }
}

/* Parses complete server frames in buf; returns the bytes consumed. */
static size_t client_frames(client_t *c, const char *buf, size_t len)
{
    size_t off = 0;
    while (len - off >= 2 && c->state != CL_DEAD) {
        const unsigned char *h = (const unsigned char *)buf + off;
        uint64_t plen = h[1] & 0x7f;
        size_t hlen = 2;
        if (plen == 126) {
            if (len - off < 4) {
                break;
            }
            plen = ((uint64_t)h[2] << 8) | h[3];
            hlen = 4;
        } else if (plen == 127) {
            if (len - off < 10) {
                break;
            }
            plen = 0;
            for (int i = 0; i < 8; i++) {
                plen = (plen << 8) | h[2 + i];
            }
            hlen = 10;
        }
        if (len - off - hlen < plen) {
            break;
        }
        int opcode = h[0] & 0x0f;
        const char *payload = buf + off + hlen;
        if (opcode == 1) {
            client_on_text(c, payload, (size_t)plen);
        } else if (opcode == 9) {
            client_send(c, 10, payload, (size_t)plen);
        } else if (opcode == 8) {
            __atomic_fetch_add(&g.st->closed_by_server, 1, __ATOMIC_RELAXED);
            client_kill(c, 1);
        }
        off += hlen + (size_t)plen;
    }
    return off;
}

static void client_keep(client_t *c, const char *data, size_t len)
{
    if (c->ilen + len > c->icap) {
        size_t cap = c->icap ? c->icap : 1024;
        while (cap < c->ilen + len) {
            cap *= 2;
        }
        char *p = realloc(c->ibuf, cap);
        if (p == NULL) {
            client_kill(c, 1);
            return;
        }
        c->ibuf = p;
        c->icap = cap;
    }
    memcpy(c->ibuf + c->ilen, data, len);
    c->ilen += len;
}

static void client_on_data(client_t *c, const char *data, size_t len)
{
    if (c->state == CL_UPGRADING) {
        client_keep(c, data, len);
        char *end = memmem(c->ibuf, c->ilen, "\r\n\r\n", 4);
        if (end == NULL) {
            return;
        }
        if (c->ilen < 12 || memcmp(c->ibuf, "HTTP/1.1 101", 12) != 0) {
            client_kill(c, 1);
            return;
        }
        size_t head = (size_t)(end + 4 - c->ibuf);
        size_t rest = c->ilen - head;
        memmove(c->ibuf, c->ibuf + head, rest);
        c->ilen = rest;
        c->state = CL_OPEN;         /* frames from here on */
        size_t used = client_frames(c, c->ibuf, c->ilen);
        memmove(c->ibuf, c->ibuf + used, c->ilen - used);
        c->ilen -= used;
        return;
    }
    if (c->ilen > 0) {
        client_keep(c, data, len);
        size_t used = client_frames(c, c->ibuf, c->ilen);
        memmove(c->ibuf, c->ibuf + used, c->ilen - used);
        c->ilen -= used;
        return;
    }
    /* The common case: whole frames straight from the read buffer. */
    size_t used = client_frames(c, data, len);
    if (used < len && c->state != CL_DEAD) {
        client_keep(c, data + used, len - used);
    }
}

static void client_on_alloc(uv_handle_t *h, size_t sz, uv_buf_t *b)
{
    (void)h;
    (void)sz;
    *b = uv_buf_init(g.readbuf, sizeof(g.readbuf));
}

static void client_upgrade(client_t *c)
{
    char req_text[256];
    snprintf(req_text, sizeof(req_text),
             "GET /ws?user=load%d HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
             "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
             "Sec-WebSocket-Version: 13\r\n\r\n", c->idx, g.o->host, g.o->port);
    if (client_write(c, req_text, strlen(req_text)) != 0) {
        client_kill(c, 1);
        return;
    }
    c->state = CL_UPGRADING;
}

/* Ciphertext from the server: the handshake, then records to decrypt. */
static void client_on_tls(client_t *c, const char *data, size_t len)
{
    if (BIO_write(c->rbio, data, (int)len) != (int)len) {
        client_kill(c, 1);
        return;
    }
    if (c->state == CL_HANDSHAKE) {
        int rc = SSL_do_handshake(c->ssl);
        if (client_tls_flush(c) != 0) {
            client_kill(c, 1);
            return;
        }
        if (rc != 1) {
            if (SSL_get_error(c->ssl, rc) != SSL_ERROR_WANT_READ) {
                ERR_clear_error();
                client_kill(c, 1);
            }
            return;
        }
        client_upgrade(c);
    }
    for (;;) {
        if (c->state == CL_DEAD) {
            return;
        }
        int n = SSL_read(c->ssl, g.plain, sizeof(g.plain));
        if (n <= 0) {
            int e = SSL_get_error(c->ssl, n);
            ERR_clear_error();
            if (e != SSL_ERROR_WANT_READ) {
                if (c->state == CL_JOINED || c->state == CL_OPEN) {
                    __atomic_fetch_add(&g.st->closed_by_server, 1, __ATOMIC_RELAXED);
                }
                client_kill(c, 1);
            }
            return;
        }
        client_on_data(c, g.plain, (size_t)n);
    }
}

static void client_on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    client_t *c = (client_t *)s;
    if (n < 0) {
        if (c->state == CL_JOINED || c->state == CL_OPEN) {
            __atomic_fetch_add(&g.st->closed_by_server, 1, __ATOMIC_RELAXED);
        }
        client_kill(c, 1);
        return;
    }
    if (n > 0 && c->ssl == NULL) {
        client_on_data(c, b->base, (size_t)n);
    } else if (n > 0) {
        client_on_tls(c, b->base, (size_t)n);
    }
}

static void client_on_connect(uv_connect_t *req, int status)
{
    client_t *c = req->data;
    if (status < 0) {
        client_kill(c, 1);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    if (uv_read_start((uv_stream_t *)&c->tcp, client_on_alloc, client_on_read) != 0) {
        client_kill(c, 1);
        return;
    }
    if (!g.o->tls) {
        client_upgrade(c);
        return;
    }
    c->ssl = SSL_new(g.tls_ctx);
    c->rbio = BIO_new(BIO_s_mem());
    c->wbio = BIO_new(BIO_s_mem());
    if (c->ssl == NULL || c->rbio == NULL || c->wbio == NULL) {
        BIO_free(c->rbio);
        BIO_free(c->wbio);
        client_kill(c, 1);
        return;
    }
    SSL_set_bio(c->ssl, c->rbio, c->wbio);
    SSL_set_connect_state(c->ssl);
    c->state = CL_HANDSHAKE;
    int rc = SSL_do_handshake(c->ssl);     /* the ClientHello */
    if ((rc != 1 && SSL_get_error(c->ssl, rc) != SSL_ERROR_WANT_READ) || client_tls_flush(c) != 0) {
        ERR_clear_error();
        client_kill(c, 1);
    }
}

static void client_start(client_t *c)
{
    c->t_start = now_us();
    if (!c->rejoin) {
        c->last_seq = -1;
        __atomic_fetch_add(&g.st->attempted, 1, __ATOMIC_RELAXED);
    }
    int rc = uv_tcp_init(g.loop, &c->tcp);
    c->tcp.data = c;
    if (rc != 0) {
        c->state = CL_DEAD;
        g.settled++;
        __atomic_fetch_add(&g.st->failed, 1, __ATOMIC_RELAXED);
        return;
    }
    /* Spread source addresses so that 50,000 connections do not run out
     * of ephemeral ports on one address pair. */
    if (g.o->nsrc > 1) {
        struct sockaddr_in src;
        char ip[32];
        snprintf(ip, sizeof(ip), "127.0.0.%d", 2 + c->idx % g.o->nsrc);
        uv_ip4_addr(ip, 0, &src);
        /* IP_BIND_ADDRESS_NO_PORT: the port is picked at connect() from
         * the whole 4-tuple. A plain bind to port 0 searches for a port
         * free on that address alone, which at 100,000 connections costs
         * the tool most of a core in the kernel's bind-conflict scan. */
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        int one = 1;
        if (fd != -1 && setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one)) == 0 &&
            bind(fd, (const struct sockaddr *)&src, sizeof(src)) == 0 && uv_tcp_open(&c->tcp, fd) == 0) {
            fd = -1;    /* the handle owns it now */
        } else {
            uv_tcp_bind(&c->tcp, (const struct sockaddr *)&src, 0);
        }
        if (fd != -1) {
            close(fd);
        }
    }
    c->creq.data = c;
    if (uv_tcp_connect(&c->creq, &c->tcp, (const struct sockaddr *)&g.target, client_on_connect) != 0) {
        client_kill(c, 1);
    }
}

static void child_send_due(uint64_t elapsed_us)
{
    double rate = g.sh->rate;
    char msg[4096];
    /* Only the senders: walking every client each millisecond costs a
     * cache miss per client, which at 100,000 clients is most of a core. */
    for (int k = 0; k < g.nsenders; k++) {
        client_t *c = &g.clients[g.senders[k]];
        if (c->state != CL_JOINED) {
            continue;
        }
        c->credit += rate * (double)elapsed_us / 1e6;
        /* After a stall, no burst of a second's worth (and below one
         * message a second, credit must still reach one). */
        double cap = rate > 1.0 ? rate : 1.0;
        if (c->credit > cap) {
            c->credit = cap;
        }
        while (c->credit >= 1.0 && c->state == CL_JOINED) {
            c->credit -= 1.0;
            uint64_t t = now_us();
            snprintf(msg, sizeof(msg),
                     "{\"type\":\"chat\",\"id\":\"%" PRIu64 "-%d-%" PRIu64 "\",\"payload\":{\"room\":"
                     "\"load-%d\",\"content\":\"%" PRIu64 " %s\"}}",
                     t, c->idx, c->nsent++, c->room, t, g.pad);
            client_send_text(c, msg);
            __atomic_fetch_add(&g.st->sent, 1, __ATOMIC_RELAXED);
        }
    }
}

static void child_on_tick(uv_timer_t *t)
{
    (void)t;
    uint64_t now = now_us();
    uint64_t elapsed = g.last_tick_us ? now - g.last_tick_us : 0;
    g.last_tick_us = now;
    /* Connect at the configured rate, so the server sees a ramp and not a
     * SYN flood. */
    double per_s = (double)g.o->connect_rate / g.o->procs;
    g.connect_credit += per_s * (double)elapsed / 1e6;
    /* After a stall, at most 10 ms worth at once: a burst of SYNs would
     * overflow the listen backlog and fail connections for nothing. */
    if (g.connect_credit > per_s / 100 + 1) {
        g.connect_credit = per_s / 100 + 1;
    }
    while (g.connect_credit >= 1.0 && g.next_connect < g.count) {
        g.connect_credit -= 1.0;
        client_start(&g.clients[g.next_connect++]);
    }
    if (g.next_connect == 0 && g.count > 0) {
        client_start(&g.clients[g.next_connect++]);     /* the first tick has no elapsed time */
    }
    if (!g.st->ready && g.next_connect == g.count && g.settled >= g.count) {
        g.st->ready = 1;
    }
    if (g.sh->go && !g.sh->stop) {
        child_send_due(elapsed);
        /* Churn: receivers drop their connection and come back with since. */
        g.churn_credit += g.o->churn_rate / g.o->procs * (double)elapsed / 1e6;
        while (g.churn_credit >= 1.0) {
            g.churn_credit -= 1.0;
            client_t *c = &g.clients[child_rand() % (uint32_t)g.count];
            if (!c->sender && c->state == CL_JOINED && c->last_seq >= 0) {
                c->rejoin = 1;
                c->state = CL_CONNECTING;
                __atomic_fetch_add(&g.st->churned, 1, __ATOMIC_RELAXED);
                uv_close((uv_handle_t *)&c->tcp, client_on_close);
            }
        }
    }
    if (g.sh->quit) {
        for (int i = 0; i < g.count; i++) {
            client_t *c = &g.clients[i];
            if (c->state != CL_DEAD && !uv_is_closing((uv_handle_t *)&c->tcp)) {
                uv_close((uv_handle_t *)&c->tcp, client_on_close);
            }
            c->state = CL_DEAD;
        }
        uv_close((uv_handle_t *)&g.tick, NULL);
    }
}

static int child_run(const opts_t *o, shared_t *sh, int id)
{
    memset(&g, 0, sizeof(g));
    g.o = o;
    g.sh = sh;
    g.st = &sh->child[id];
    g.rng = (uint32_t)(now_us() ^ ((uint64_t)getpid() << 16)) | 1;
    g.first = (int)((int64_t)o->conns * id / o->procs);
    g.count = (int)((int64_t)o->conns * (id + 1) / o->procs) - g.first;
    g.loop = uv_default_loop();
    uv_ip4_addr(o->host, o->port, &g.target);
    g.pad = calloc((size_t)o->size + 1, 1);
    g.clients = calloc((size_t)g.count, sizeof(client_t));
    g.senders = calloc((size_t)g.count + 1, sizeof(int));
    if (o->tls) {
        g.tls_ctx = SSL_CTX_new(TLS_client_method());
        if (g.tls_ctx == NULL) {
            fprintf(stderr, "chat-load: SSL_CTX_new failed\n");
            return 1;
        }
        /* A load tool measures the server: it trusts whatever certificate
         * it is shown, and resumes no session, so that every connection
         * costs the server a full handshake. */
        SSL_CTX_set_verify(g.tls_ctx, SSL_VERIFY_NONE, NULL);
        SSL_CTX_set_session_cache_mode(g.tls_ctx, SSL_SESS_CACHE_OFF);
        SSL_CTX_set_mode(g.tls_ctx, SSL_MODE_RELEASE_BUFFERS);
    }
    if (g.pad == NULL || g.clients == NULL || g.senders == NULL) {
        fprintf(stderr, "chat-load: out of memory\n");
        return 1;
    }
    memset(g.pad, 'x', (size_t)o->size);
    for (int i = 0; i < g.count; i++) {
        client_t *c = &g.clients[i];
        c->idx = g.first + i;
        c->room = c->idx % o->rooms;
        c->tcp.data = c;
        /* Senders are spread evenly over rooms: index i < senders. */
        c->sender = c->idx < o->senders;
        if (c->sender) {
            g.senders[g.nsenders++] = i;
        }
        /* Senders start at random phases, as independent clients would,
         * instead of all firing in the same millisecond. */
        c->credit = (double)(child_rand() % 1000) / 1000.0;
    }
    uv_timer_init(g.loop, &g.tick);
    uv_timer_start(&g.tick, child_on_tick, 1, 1);
    uv_run(g.loop, UV_RUN_DEFAULT);
    for (int i = 0; i < g.count; i++) {
        free(g.clients[i].ibuf);
    }
    free(g.clients);
    free(g.senders);
    free(g.pad);
    g.st->done = 1;
    return 0;
}

/* ---------------------------------------------------------------------- */
/* The parent: options, children, sampling, report. */

typedef struct {
    uint64_t rss;       /* bytes, summed over the tree */
    double cpu;         /* seconds, summed */
    int procs;
} tree_t;

static void tree_sample(int pid, tree_t *t)
{
    char path[64], buf[1024];
    snprintf(path, sizeof(path), "/proc/%d/statm", pid);
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        return;
    }
    unsigned long size = 0, resident = 0;
    if (fscanf(f, "%lu %lu", &size, &resident) == 2) {
        t->rss += (uint64_t)resident * (uint64_t)sysconf(_SC_PAGESIZE);
        t->procs++;
    }
    fclose(f);
    snprintf(path, sizeof(path), "/proc/%d/stat", pid);
    f = fopen(path, "r");
    if (f != NULL) {
        if (fgets(buf, sizeof(buf), f) != NULL) {
            char *p = strrchr(buf, ')');
            unsigned long ut = 0, stt = 0;
            if (p != NULL && sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu",
                                    &ut, &stt) == 2) {
                t->cpu += (double)(ut + stt) / (double)sysconf(_SC_CLK_TCK);
            }
        }
        fclose(f);
    }
    snprintf(path, sizeof(path), "/proc/%d/task/%d/children", pid, pid);
    f = fopen(path, "r");
    if (f != NULL) {
        int child;
        while (fscanf(f, "%d", &child) == 1) {
            tree_sample(child, t);
        }
        fclose(f);
    }
}

static void usage(void)
{
    printf("usage: chat-load [options]\n"
           "  --url ws://127.0.0.1:8080/ws   server (loopback only unless --allow-remote;\n"
           "                                 wss:// for TLS, the certificate unchecked)\n"
           "  --scenario idle|fanout|churn|ramp  (fanout)\n"
           "  --conns N (1000)  --rooms R (10)  --senders S (10)  --rate MSG/S per sender (10)\n"
           "  --size BYTES of padding per message (64)  --duration S (10)  --procs P (auto)\n"
           "  --connect-rate CONN/S (5000)  --source-ips N (16)  --server-pid PID (RSS/CPU)\n"
           "  --rate-step MSG/S (ramp, = --rate)  --step-seconds S (ramp, 5)\n"
           "  --p99-bound-ms MS (ramp, 50)  --json FILE (report)  --allow-remote\n"
           "  --churn-rate N (churn: reconnects/s with join since; default conns/20)\n");
}

static int parse_opts(int argc, char **argv, opts_t *o)
{
    memset(o, 0, sizeof(*o));
    snprintf(o->host, sizeof(o->host), "127.0.0.1");
    o->port = 8080;
    snprintf(o->scenario, sizeof(o->scenario), "fanout");
    o->conns = 1000;
    o->rooms = 10;
    o->senders = 10;
    o->rate = 10;
    o->size = 64;
    o->duration = 10;
    o->connect_rate = 5000;
    o->nsrc = 16;
    o->step_seconds = 5;
    o->p99_bound_ms = 50;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--help") == 0) {
            usage();
            exit(0);
        } else if (strcmp(a, "--allow-remote") == 0) {
            o->allow_remote = 1;
            continue;
        }
        if (v == NULL) {
            fprintf(stderr, "chat-load: %s needs a value\n", a);
            return -1;
        }
        i++;
        if (strcmp(a, "--url") == 0) {
            o->tls = strncmp(v, "wss://", 6) == 0;
            if (sscanf(v + (o->tls ? 6 : 5), "%63[^:/]:%d", o->host, &o->port) < 1 ||
                (!o->tls && strncmp(v, "ws://", 5) != 0)) {
                fprintf(stderr, "chat-load: --url must be ws://HOST:PORT/ws or wss://HOST:PORT/ws\n");
                return -1;
            }
        } else if (strcmp(a, "--scenario") == 0) {
            snprintf(o->scenario, sizeof(o->scenario), "%s", v);
        } else if (strcmp(a, "--conns") == 0) {
            o->conns = atoi(v);
        } else if (strcmp(a, "--rooms") == 0) {
            o->rooms = atoi(v);
        } else if (strcmp(a, "--senders") == 0) {
            o->senders = atoi(v);
        } else if (strcmp(a, "--rate") == 0) {
            o->rate = atof(v);
        } else if (strcmp(a, "--size") == 0) {
            o->size = atoi(v);
        } else if (strcmp(a, "--duration") == 0) {
            o->duration = atoi(v);
        } else if (strcmp(a, "--procs") == 0) {
            o->procs = atoi(v);
        } else if (strcmp(a, "--connect-rate") == 0) {
            o->connect_rate = atoi(v);
        } else if (strcmp(a, "--source-ips") == 0) {
            o->nsrc = atoi(v);
        } else if (strcmp(a, "--server-pid") == 0) {
            o->server_pid = atoi(v);
        } else if (strcmp(a, "--churn-rate") == 0) {
            o->churn_rate = atof(v);
        } else if (strcmp(a, "--rate-step") == 0) {
            o->rate_step = atof(v);
        } else if (strcmp(a, "--step-seconds") == 0) {
            o->step_seconds = atoi(v);
        } else if (strcmp(a, "--p99-bound-ms") == 0) {
            o->p99_bound_ms = atof(v);
        } else if (strcmp(a, "--json") == 0) {
            snprintf(o->json, sizeof(o->json), "%s", v);
        } else {
            fprintf(stderr, "chat-load: unknown option %s (see --help)\n", a);
            return -1;
        }
    }
    if (strcmp(o->scenario, "churn") == 0 && o->churn_rate <= 0) {
        o->churn_rate = (double)o->conns / 20.0;  /* everyone once in 20 s */
    }
    if (strcmp(o->scenario, "churn") != 0) {
        o->churn_rate = 0;
    }
    if (strcmp(o->scenario, "idle") != 0 && strcmp(o->scenario, "fanout") != 0 &&
        strcmp(o->scenario, "ramp") != 0 && strcmp(o->scenario, "churn") != 0) {
        fprintf(stderr, "chat-load: unknown scenario %s\n", o->scenario);
        return -1;
    }
    if (strcmp(o->scenario, "idle") == 0) {
        o->senders = 0;
    }
    struct in_addr addr;
    if (inet_pton(AF_INET, o->host, &addr) != 1) {
        fprintf(stderr, "chat-load: --url needs a numeric IPv4 host\n");
        return -1;
    }
    if ((ntohl(addr.s_addr) >> 24) != 127 && !o->allow_remote) {
        fprintf(stderr, "chat-load: refusing %s: not loopback (use --allow-remote)\n", o->host);
        return -1;
    }
    if ((ntohl(addr.s_addr) >> 24) != 127) {
        o->nsrc = 1;
    }
    if (o->conns < 1 || o->rooms < 1 || o->rooms > LOAD_MAX_ROOMS || o->senders < 0 ||
        o->senders > o->conns || o->duration < 1 || o->duration > 3600 || o->size < 0 ||
        o->size > 60000 || o->rate < 0 || o->connect_rate < 1000) {
        fprintf(stderr, "chat-load: option out of range (see --help)\n");
        return -1;
    }
    if (o->procs <= 0) {
        o->procs = (o->conns + 9999) / 10000;
    }
    if (o->procs > LOAD_MAX_PROCS) {
        o->procs = LOAD_MAX_PROCS;
    }
    if (o->rate_step <= 0) {
        o->rate_step = o->rate;
    }
    return 0;
}

typedef struct {
    uint64_t attempted, established, failed, closed, sent, acked, errors, received, dups, gaps;
    uint64_t churned, unrecovered;
    uint64_t expected;
    int ready;
} totals_t;

static void totals(const opts_t *o, const shared_t *sh, totals_t *t)
{
    memset(t, 0, sizeof(*t));
    t->ready = 1;
    for (int i = 0; i < o->procs; i++) {
        const child_stats_t *c = &sh->child[i];
        t->attempted += c->attempted;
        t->established += c->established;
        t->failed += c->failed;
        t->closed += c->closed_by_server;
        t->sent += c->sent;
        t->acked += c->acked;
        t->errors += c->errors;
        t->received += c->received;
        t->dups += c->duplicates;
        t->gaps += c->gaps;
        t->churned += c->churned;
        t->unrecovered += c->unrecovered;
        t->ready &= c->ready;
    }
    /* Every acked message is owed to every member of its room. */
    for (int r = 0; r < o->rooms; r++) {
        uint64_t acked = 0;
        for (int i = 0; i < o->procs; i++) {
            acked += sh->child[i].acked_room[r];
        }
        uint64_t members = (uint64_t)(o->conns / o->rooms + (r < o->conns % o->rooms));
        t->expected += acked * members;
    }
}

static void merged(const opts_t *o, const shared_t *sh, int which, int step, hist_t *h)
{
    memset(h, 0, sizeof(*h));
    for (int i = 0; i < o->procs; i++) {
        const child_stats_t *c = &sh->child[i];
        hist_merge(h, which == 0 ? &c->connect_us : which == 1 ? &c->ack_us : &c->delivery_us[step]);
    }
}

static void json_hist(FILE *f, const char *name, const hist_t *h)
{
    fprintf(f, "  \"%s_ms\": {\"count\": %" PRIu64 ", \"p50\": %.3f, \"p90\": %.3f, \"p99\": %.3f, "
               "\"p999\": %.3f, \"max\": %.3f},\n",
            name, hist_total(h), hist_quantile(h, 0.5) / 1e3, hist_quantile(h, 0.9) / 1e3,
            hist_quantile(h, 0.99) / 1e3, hist_quantile(h, 0.999) / 1e3, hist_max(h) / 1e3);
}

int main(int argc, char **argv)
{
    opts_t o;
    if (parse_opts(argc, argv, &o) != 0) {
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    shared_t *sh = mmap(NULL, sizeof(shared_t), PROT_READ | PROT_WRITE,
                        MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (sh == MAP_FAILED) {
        perror("chat-load: mmap");
        return 1;
    }
    sh->rate = o.rate;
    tree_t base = { 0 };
    if (o.server_pid > 0) {
        tree_sample(o.server_pid, &base);
    }
    struct rusage ru0;
    getrusage(RUSAGE_SELF, &ru0);

    pid_t kids[LOAD_MAX_PROCS];
    for (int i = 0; i < o.procs; i++) {
        kids[i] = fork();
        if (kids[i] == -1) {
            perror("chat-load: fork");
            sh->quit = 1;
            return 1;
        }
        if (kids[i] == 0) {
            _exit(child_run(&o, sh, i));
        }
    }

    uint64_t t0 = now_us();
    uint64_t peak_rss = 0;
    double ready_s = 0;
    totals_t t, prev = { 0 };
    /* Phase 1: connect and join (bounded by time). */
    uint64_t connect_deadline = t0 + (uint64_t)(o.conns / (o.connect_rate / 2) + 30) * 1000000u;
    for (;;) {
        usleep(200000);
        totals(&o, sh, &t);
        if (t.ready || now_us() > connect_deadline) {
            break;
        }
    }
    ready_s = (double)(now_us() - t0) / 1e6;
    fprintf(stderr, "chat-load: %" PRIu64 "/%d connected in %.1fs (%" PRIu64 " failed)\n",
            t.established, o.conns, ready_s, t.failed);

    /* Let the join storm settle (member events, presence) before measuring. */
    usleep(2000000);

    /* Phase 2: hold (idle) or send (fanout, ramp), a progress line a second. */
    sh->go = 1;
    uint64_t start = now_us();
    int is_ramp = strcmp(o.scenario, "ramp") == 0;
    int total_s = is_ramp ? o.step_seconds * LOAD_MAX_STEPS : o.duration;
    double knee_rate = 0, knee_p99 = 0;
    int steps_run = 0;
    double step_rates[LOAD_MAX_STEPS] = { 0 };
    for (int s = 1; s <= total_s; s++) {
        usleep(1000000);
        totals(&o, sh, &t);
        tree_t tr = { 0 };
        if (o.server_pid > 0) {
            tree_sample(o.server_pid, &tr);
            peak_rss = tr.rss > peak_rss ? tr.rss : peak_rss;
        }
        hist_t h;
        merged(&o, sh, 2, sh->step, &h);
        fprintf(stderr, "t=%ds conns=%" PRIu64 " sent/s=%" PRIu64 " delivered/s=%" PRIu64
                " p99=%.2fms rss=%.1fMiB closed=%" PRIu64 "\n",
                s, t.established - t.closed, t.sent - prev.sent, t.received - prev.received,
                hist_quantile(&h, 0.99) / 1e3, (double)tr.rss / 1048576.0, t.closed);
        prev = t;
        if (is_ramp && s % o.step_seconds == 0) {
            int step = sh->step;
            step_rates[step] = sh->rate;
            steps_run = step + 1;
            double p99 = hist_quantile(&h, 0.99) / 1e3;
            fprintf(stderr, "step %d: rate/sender=%.0f deliveries/s asked=%.0f p99=%.2fms\n", step,
                    sh->rate, sh->rate * o.senders * ((double)o.conns / o.rooms), p99);
            if (p99 > o.p99_bound_ms || step + 1 >= LOAD_MAX_STEPS) {
                break;
            }
            knee_rate = sh->rate;
            knee_p99 = p99;
            sh->rate += o.rate_step;
            sh->step = step + 1;
        }
    }
    double send_s = (double)(now_us() - start) / 1e6;
    sh->stop = 1;
    usleep(2000000);    /* let deliveries in flight arrive */
    totals(&o, sh, &t);
    /* Settled RSS: every connection still open, the bursts over. */
    tree_t end_tree = { 0 };
    if (o.server_pid > 0) {
        tree_sample(o.server_pid, &end_tree);
        peak_rss = end_tree.rss > peak_rss ? end_tree.rss : peak_rss;
    }
    sh->quit = 1;
    for (int i = 0; i < o.procs; i++) {
        int st;
        waitpid(kids[i], &st, 0);
    }
    struct rusage ru_self, ru_kids;
    getrusage(RUSAGE_SELF, &ru_self);
    getrusage(RUSAGE_CHILDREN, &ru_kids);
    double tool_cpu = (double)(ru_self.ru_utime.tv_sec + ru_self.ru_stime.tv_sec +
                               ru_kids.ru_utime.tv_sec + ru_kids.ru_stime.tv_sec) +
                      (double)(ru_self.ru_utime.tv_usec + ru_self.ru_stime.tv_usec +
                               ru_kids.ru_utime.tv_usec + ru_kids.ru_stime.tv_usec) / 1e6;

    hist_t hc, ha, hd, hs;
    merged(&o, sh, 0, 0, &hc);
    merged(&o, sh, 1, 0, &ha);
    memset(&hd, 0, sizeof(hd));
    for (int s = 0; s < LOAD_MAX_STEPS; s++) {
        merged(&o, sh, 2, s, &hs);
        hist_merge(&hd, &hs);
    }
    uint64_t lost = t.expected > t.received - t.dups ? t.expected - (t.received - t.dups) : 0;

    FILE *f = stdout;
    if (o.json[0] != '\0' && (f = fopen(o.json, "w")) == NULL) {
        perror("chat-load: --json");
        f = stdout;
    }
    fprintf(f, "{\n  \"scenario\": \"%s\",\n  \"conns\": %d, \"rooms\": %d, \"senders\": %d, "
               "\"rate_per_sender\": %.1f, \"size\": %d, \"procs\": %d,\n",
            o.scenario, o.conns, o.rooms, o.senders, is_ramp ? knee_rate : o.rate, o.size, o.procs);
    fprintf(f, "  \"connections\": {\"attempted\": %" PRIu64 ", \"established\": %" PRIu64
               ", \"failed\": %" PRIu64 ", \"closed_by_server\": %" PRIu64 ", \"ready_s\": %.2f},\n",
            t.attempted, t.established, t.failed, t.closed, ready_s);
    json_hist(f, "connect", &hc);
    fprintf(f, "  \"messages\": {\"sent\": %" PRIu64 ", \"acked\": %" PRIu64 ", \"errors\": %" PRIu64
               ", \"expected_deliveries\": %" PRIu64 ", \"received\": %" PRIu64 ", \"lost\": %" PRIu64
               ", \"duplicates\": %" PRIu64 ", \"out_of_order\": %" PRIu64
               ", \"deliveries_per_s\": %.0f, \"reconnects\": %" PRIu64 ", \"not_recovered\": %" PRIu64 "},\n",
            t.sent, t.acked, t.errors, t.expected, t.received, lost, t.dups, t.gaps,
            send_s > 0 ? (double)t.received / send_s : 0, t.churned, t.unrecovered);
    json_hist(f, "ack", &ha);
    json_hist(f, "delivery", &hd);
    if (is_ramp) {
        fprintf(f, "  \"ramp\": {\"p99_bound_ms\": %.1f, \"knee_rate_per_sender\": %.1f, "
                   "\"knee_deliveries_per_s\": %.0f, \"knee_p99_ms\": %.2f, \"steps\": [",
                o.p99_bound_ms, knee_rate, knee_rate * o.senders * ((double)o.conns / o.rooms),
                knee_p99);
        for (int s = 0; s < steps_run; s++) {
            merged(&o, sh, 2, s, &hs);
            fprintf(f, "%s{\"rate\": %.0f, \"deliveries_per_s\": %.0f, \"p50_ms\": %.3f, \"p99_ms\": %.3f}",
                    s ? ", " : "", step_rates[s], step_rates[s] * o.senders * ((double)o.conns / o.rooms),
                    hist_quantile(&hs, 0.5) / 1e3, hist_quantile(&hs, 0.99) / 1e3);
        }
        fprintf(f, "]},\n");
    }
    double server_cpu = o.server_pid > 0 ? end_tree.cpu - base.cpu : 0;
    fprintf(f, "  \"server\": {\"pid\": %d, \"rss_base_bytes\": %" PRIu64 ", \"rss_peak_bytes\": %" PRIu64
               ", \"rss_end_bytes\": %" PRIu64 ", \"rss_per_conn_bytes\": %.0f, \"cpu_s\": %.2f},\n",
            o.server_pid, base.rss, peak_rss, end_tree.rss,
            t.established ? ((double)end_tree.rss - (double)base.rss) / (double)t.established : 0,
            server_cpu);
    fprintf(f, "  \"tool\": {\"cpu_s\": %.2f, \"wall_s\": %.2f}\n}\n", tool_cpu,
            (double)(now_us() - t0) / 1e6);
    if (f != stdout) {
        fclose(f);
    }
    munmap(sh, sizeof(*sh));
    return t.failed == 0 && lost == 0 && t.dups == 0 && t.gaps == 0 && t.unrecovered == 0 ? 0 : 3;
}
