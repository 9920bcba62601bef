/*
 * fuzz_tls: the TLS input path of a connection on the TLS port
 * (worker/net/tls.c: our BIO over borrowed and kept ciphertext,
 * tls_conn_read's verdicts, tls_conn_write, tls_conn_shutdown, tls_swap).
 * OpenSSL itself is the system library, not instrumented: the coverage
 * libFuzzer steers by is tls.c's and this harness's.
 *
 * The server side is driven the way worker/net/conn.c drives it: each read
 * of the socket is tls_conn_input() of an exact-size heap copy (freed right
 * after, so ASan sees any use of it past tls_conn_input_done()), then
 * tls_conn_read() into a 16 KiB buffer until TLS_AGAIN or a verdict, then
 * tls_conn_input_done(); after TLS_FAILED, TLS_PLAINTEXT or TLS_EOF nothing
 * more is fed. The reader sometimes pauses between reads (an upload waiting
 * for its store): bytes that arrive meanwhile are only input and kept, and
 * the reader resumes later on tls_conn_has_input(), as conn_flush does.
 *
 * The first input byte picks the mode:
 *
 *  bit 0 clear (raw): the rest is what a client sends, fed in chunks of
 *    pseudo-random sizes. Nothing can finish a handshake, so no plaintext
 *    may come out; TLS_PLAINTEXT must come exactly for streams that start
 *    like an HTTP request; the output function sometimes fails (out of
 *    memory), and the read it failed in must then report TLS_FAILED.
 *
 *  bit 0 set (session): an in-memory OpenSSL client handshakes with the
 *    server. Bit 1: TLS 1.3 (else 1.2); bits 2-3: the ALPN offer (none,
 *    http/1.1, h2 + http/1.1, h2 only; http/1.1 must be chosen when
 *    offered, nothing otherwise); bit 4: resume with a ticket from an
 *    earlier full handshake (which must work: stateless tickets with the
 *    server's session cache off); bits 5-6: the corruption allowed (none,
 *    a flipped bit, a truncated batch, a duplicated record), done to one
 *    batch of client records with probability 1/8. The rest is a list of
 *    operations (see run_ops): client messages, server replies, key
 *    updates or a renegotiation attempt, shutdowns from either side, a
 *    certificate swap. What the server decrypts must be, byte for byte, a
 *    prefix of what the client wrote, and all of it when nothing was
 *    corrupted; a damaged record must fail the connection, never come out
 *    as plaintext. What the server writes, the client must read intact,
 *    then its close_notify.
 *
 * Everything the server writes must be well-formed TLS records, whole ones
 * per call of the output function. OpenSSL's random numbers come from a
 * generator seeded by a hash of the input, so every run of an input is the
 * same run (crashes reproduce, coverage is stable). FUZZ_TLS_STATS=1 prints
 * at exit how often each path ran, to check what a corpus reaches:
 *   FUZZ_TLS_STATS=1 build/fuzz/fuzz_tls -runs=0 tests/fuzz/corpus/fuzz_tls
 */

/* RAND_set_rand_method is deprecated in OpenSSL 3 but is still the one way
 * to make libssl's randomness (key shares, nonces) deterministic. */
#define OPENSSL_SUPPRESS_DEPRECATED

#include "../../worker/net/tls.h"
#include "../../common/buf.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/err.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>

#define CHECK(cond) do { \
        if (!(cond)) { \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
            abort(); \
        } \
    } while (0)

/*
 * TEST-ONLY certificate and key (P-256, self-signed, CN "chatd fuzz test"),
 * made once with
 *   openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
 *       -days 36500 -subj "/CN=chatd fuzz test"
 * The key protects nothing: never use it outside this target.
 */
static const char test_cert[] =
    "-----BEGIN CERTIFICATE-----\n"
    "MIIBojCCAUegAwIBAgIUGaibjLiaxm9iaAsBFoVpqx3nJd8wCgYIKoZIzj0EAwIw\n"
    "GjEYMBYGA1UEAwwPY2hhdGQgZnV6eiB0ZXN0MCAXDTI2MTEzMDE2NTUyMVoYDzIx\n"
    "MjYxMTA2MTY1NTIxWjAaMRgwFgYDVQQDDA9jaGF0ZCBmdXp6IHRlc3QwWTATBgcq\n"
    "hkjOPQIBBggqhkjOPQMBBwNCAARQoZ80X4rDN9OOuxoPErg6BX2maaYy401KBeTR\n"
    "WfR2LkwGL4jS7B8Ll8yjDU0hHg1kKcDDZD8+k8UGpOKIMhh/o2kwZzAdBgNVHQ4E\n"
    "FgQUgI4ANPxwN48ZTVXZDRtNjx9D0XkwHwYDVR0jBBgwFoAUgI4ANPxwN48ZTVXZ\n"
    "DRtNjx9D0XkwDwYDVR0TAQH/BAUwAwEB/zAUBgNVHREEDTALgglsb2NhbGhvc3Qw\n"
    "CgYIKoZIzj0EAwIDSQAwRgIhAMyzHQzSCJTAwp4TU8ors7zQ0KfupmbrKAPzTZ1u\n"
    "iuucAiEA4CFim+2+8HC9vELXXhgq+phfY3Yfw11ChmORID0W3mI=\n"
    "-----END CERTIFICATE-----\n";

static const char test_key[] =
    "-----BEGIN PRIVATE KEY-----\n"
    "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgmr3gGdaPhH3fmAew\n"
    "+CfiBiceEi+miz7T+hV+8/8WAvGhRANCAARQoZ80X4rDN9OOuxoPErg6BX2maaYy\n"
    "401KBeTRWfR2LkwGL4jS7B8Ll8yjDU0hHg1kKcDDZD8+k8UGpOKIMhh/\n"
    "-----END PRIVATE KEY-----\n";

/* What one TLS record may carry (RFC 8446 5.2 allows 2^14 + 256 in 1.3;
 * 1.2 allows 2^14 + 2048). */
#define REC_MAX (16384 + 2048)

/* A session stops taking operations once this much plaintext went by. */
#define PLAIN_MAX (128 * 1024)

/* How often each path ran, printed at exit when FUZZ_TLS_STATS=1 is set:
 * to see that a corpus reaches what it should. */
enum {
    ST_RAW, ST_SESSION, ST_TLS13, ST_RESUMED, ST_CORRUPTED, ST_CORRUPT_FAILED, ST_KEYUPDATE,
    ST_RENEG, ST_SRV_SHUT, ST_CL_EOF, ST_SRV_EOF, ST_SWAP, ST_OUT_FAILED, ST_PLAINTEXT, ST_FAILED,
    ST_PAUSED, ST_BYTES_IN, ST_BYTES_OUT, ST_N
};
static const char *const st_names[ST_N] = {
    "raw", "session", "tls13", "resumed", "corrupted", "corrupt_failed", "keyupdate", "reneg",
    "srv_shut", "cl_eof", "srv_eof", "swap", "out_failed", "plaintext_verdict", "failed_verdict",
    "paused", "plaintext_in", "plaintext_out",
};
static unsigned long stats[ST_N];

static void stats_print(void)
{
    for (int i = 0; i < ST_N; i++) {
        fprintf(stderr, "fuzz_tls: %s %lu\n", st_names[i], stats[i]);
    }
}

static tls_pem_t pem;
static tls_t *tls;              /* the worker's server, built once */
static SSL_CTX *client_ctx;     /* the in-memory client's, built once */

/* ---- deterministic randomness ---- */

static uint64_t rng;            /* the harness's choices */
static uint64_t ossl_rng;       /* OpenSSL's random bytes */

static uint32_t xorshift(uint64_t *s)
{
    /* xorshift64*: deterministic per input, so crashes reproduce. */
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return (uint32_t)((*s * UINT64_C(2685821657736338717)) >> 32);
}

static uint32_t next_rand(void)
{
    return xorshift(&rng);
}

static int fz_rand_bytes(unsigned char *buf, int num)
{
    for (int i = 0; i < num; i++) {
        buf[i] = (unsigned char)(xorshift(&ossl_rng) >> 24);
    }
    return 1;
}

static int fz_rand_status(void)
{
    return 1;
}

static const RAND_METHOD fz_rand = {
    .bytes = fz_rand_bytes,
    .pseudorand = fz_rand_bytes,
    .status = fz_rand_status,
};

/* ---- a TLS record stream checker ---- */

typedef struct recs_s {
    uint8_t hdr[5];
    size_t hdr_len;
    size_t body_left;
    size_t records;
} recs_t;

/* Checks that bytes continue a well-formed record stream. */
static void recs_feed(recs_t *r, const uint8_t *p, size_t n)
{
    while (n > 0) {
        if (r->body_left > 0) {
            size_t take = n < r->body_left ? n : r->body_left;
            r->body_left -= take;
            p += take;
            n -= take;
            continue;
        }
        r->hdr[r->hdr_len++] = *p++;
        n--;
        if (r->hdr_len == sizeof(r->hdr)) {
            size_t len = (size_t)r->hdr[3] << 8 | r->hdr[4];
            CHECK(r->hdr[0] >= 20 && r->hdr[0] <= 23);     /* ccs, alert, handshake, data */
            /* A protocol_version alert echoes whatever version the
             * ClientHello claimed, so that its sender can read it. */
            CHECK(r->hdr[0] == 21 || (r->hdr[1] == 3 && r->hdr[2] <= 4));
            CHECK(len > 0 && len <= REC_MAX);
            r->body_left = len;
            r->hdr_len = 0;
            r->records++;
        }
    }
}

static int recs_at_boundary(const recs_t *r)
{
    return r->hdr_len == 0 && r->body_left == 0;
}

/* ---- the server side, driven like conn.c ---- */

typedef struct srv_s {
    tls_conn_t *tc;
    buf_t out;                  /* ciphertext written, not yet taken by the client */
    recs_t recs;
    int fail_rate;              /* 1 in fail_rate output calls fails; 0: never */
    int fail_next;              /* the next output call fails */
    int out_failed;             /* an output call failed during the current call */
    int status;                 /* 0 while reading, else the TLS_ verdict */
    int paused;                 /* the reader stopped (an upload paused) */
    int may_pause;
    int small_caps;             /* sometimes read into less than a record */
    const buf_t *expect;        /* what the client wrote; NULL: no plaintext may come */
    size_t got;                 /* plaintext bytes read, all equal to expect's */
    size_t limit;               /* no plaintext past this (a corrupted record) */
    size_t fed;                 /* ciphertext bytes fed */
    uint8_t first[5];           /* the stream's first bytes */
} srv_t;

static uint8_t plain[16384];    /* conn.c reads into net->tls_plain, as large */

static int srv_out(void *ud, const uint8_t *bytes, size_t len)
{
    srv_t *s = ud;
    CHECK(len > 0 && len <= 32 * (5 + REC_MAX));
    if (s->fail_next || (s->fail_rate > 0 && next_rand() % (uint32_t)s->fail_rate == 0)) {
        s->fail_next = 0;
        s->out_failed = 1;
        stats[ST_OUT_FAILED]++;
        return -1;
    }
    /* Records leave whole: conn.c queues each call as its own frame. */
    recs_feed(&s->recs, bytes, len);
    CHECK(recs_at_boundary(&s->recs));
    CHECK(buf_append(&s->out, bytes, len) == 0);
    return 0;
}

static int srv_start(srv_t *s)
{
    memset(s, 0, sizeof(*s));
    s->limit = SIZE_MAX;
    s->tc = tls_conn_new(tls, srv_out, s);
    return s->tc != NULL ? 0 : -1;
}

static void srv_end(srv_t *s, int notify)
{
    /* conn.c's close: close_notify goes out whatever happened before
     * (a no-op unless the handshake finished), except when a write
     * failed: conn_abort drops the conn at once. */
    if (notify) {
        tls_conn_shutdown(s->tc);
        CHECK(ERR_peek_error() == 0);
    }
    tls_conn_free(s->tc);
    buf_free(&s->out);
}

/* Reads until the input runs out, a verdict, or a pause (conn_tls_pump's
 * loop). Returns 1 when the caller must call tls_conn_input_done(). */
static int srv_read_loop(srv_t *s)
{
    for (;;) {
        if (s->may_pause && next_rand() % 8 == 0) {
            s->paused = 1;
            stats[ST_PAUSED]++;
            return 1;
        }
        size_t cap = sizeof(plain);
        if (s->small_caps && next_rand() % 4 == 0) {
            cap = 1 + next_rand() % sizeof(plain);
        }
        s->out_failed = 0;
        int r = tls_conn_read(s->tc, plain, cap);
        CHECK(r > 0 || r == TLS_AGAIN || r == TLS_EOF || r == TLS_FAILED || r == TLS_PLAINTEXT);
        if (s->out_failed) {
            /* Ciphertext that could not be queued is lost: the conn must go. */
            CHECK(r == TLS_FAILED);
        }
        if (r > 0) {
            CHECK((size_t)r <= cap);
            CHECK(s->expect != NULL);
            CHECK(tls_conn_established(s->tc));
            CHECK(s->got + (size_t)r <= s->expect->len);
            CHECK(s->got + (size_t)r <= s->limit);
            CHECK(memcmp(s->expect->data + s->got, plain, (size_t)r) == 0);
            s->got += (size_t)r;
            stats[ST_BYTES_IN] += (unsigned long)r;
            continue;
        }
        if (r == TLS_AGAIN) {
            /* All input was taken: nothing waits for a resume. */
            CHECK(!tls_conn_has_input(s->tc));
            return 1;
        }
        if (r == TLS_PLAINTEXT) {
            /* Only the first bytes of a connection can be an HTTP request. */
            CHECK(!tls_conn_established(s->tc));
            CHECK(s->fed >= 5);
            CHECK(memcmp(s->first, "GET ", 4) == 0 || memcmp(s->first, "POST ", 5) == 0 ||
                  memcmp(s->first, "HEAD ", 5) == 0 || memcmp(s->first, "PUT ", 4) == 0);
        }
        s->status = r;
        stats[r == TLS_EOF ? ST_SRV_EOF : r == TLS_PLAINTEXT ? ST_PLAINTEXT : ST_FAILED]++;
        char why[256];
        tls_error(why, sizeof(why));
        CHECK(ERR_peek_error() == 0);
        return 0;
    }
}

/* One read of the socket: n bytes at data. */
static void srv_feed(srv_t *s, const uint8_t *data, size_t n)
{
    if (s->status != 0 || n == 0) {
        return;
    }
    for (size_t i = 0; i < n && s->fed + i < sizeof(s->first); i++) {
        s->first[s->fed + i] = data[i];
    }
    s->fed += n;
    uint8_t *copy = malloc(n);
    CHECK(copy != NULL);
    memcpy(copy, data, n);
    tls_conn_input(s->tc, copy, n);
    /* A paused reader takes the bytes but reads nothing (conn_tls_pump
     * breaks before its first read). */
    if (s->paused || srv_read_loop(s)) {
        CHECK(tls_conn_input_done(s->tc) == 0);
    }
    /* The worker's read buffer is reused for the next conn: tls.c must
     * hold nothing of it now. */
    memset(copy, 0xa5, n);
    free(copy);
}

/* conn_flush: the reader is ready again and input waits. */
static void srv_resume(srv_t *s, int may_pause)
{
    s->paused = 0;
    int saved = s->may_pause;
    s->may_pause = may_pause;
    while (s->status == 0 && !s->paused && tls_conn_has_input(s->tc)) {
        if (srv_read_loop(s)) {
            CHECK(tls_conn_input_done(s->tc) == 0);
        }
    }
    s->may_pause = saved;
}

/* Delivers a stretch of the client's byte stream in reads of pseudo-random
 * sizes, ending with everything read (no pause left). */
static void srv_deliver(srv_t *s, const uint8_t *p, size_t n)
{
    size_t off = 0;
    while (off < n && s->status == 0) {
        uint32_t r = next_rand();
        size_t k;
        switch (r % 4) {
        case 0: k = n - off; break;
        case 1: k = 1 + (r >> 8) % 8; break;
        default: k = 1 + (r >> 8) % 2048; break;
        }
        if (k > n - off) {
            k = n - off;
        }
        srv_feed(s, p + off, k);
        off += k;
        if (s->paused && next_rand() % 2 == 0) {
            srv_resume(s, 1);
        }
    }
    srv_resume(s, 0);
}

/* ---- mode A: raw client bytes ---- */

static void run_raw(const uint8_t *data, size_t size)
{
    srv_t s;
    CHECK(srv_start(&s) == 0);
    s.may_pause = next_rand() % 2;
    s.small_caps = 1;
    s.fail_rate = next_rand() % 4 == 0 ? 16 : 0;
    srv_deliver(&s, data, size);
    /* An HTTP request is always recognised as one (conn.c answers it). */
    if (s.fed >= 5 && (memcmp(s.first, "GET ", 4) == 0 || memcmp(s.first, "POST ", 5) == 0 ||
                       memcmp(s.first, "HEAD ", 5) == 0 || memcmp(s.first, "PUT ", 4) == 0)) {
        CHECK(s.status == TLS_PLAINTEXT);
    }
    CHECK(s.got == 0 && !tls_conn_established(s.tc));
    srv_end(&s, 1);
}

/* ---- mode B: a real session ---- */

enum { CORRUPT_NONE, CORRUPT_FLIP, CORRUPT_TRUNCATE, CORRUPT_DUP };

typedef struct sess_s {
    srv_t srv;
    SSL *cl;
    BIO *cl_in;                 /* server -> client */
    BIO *cl_out;                /* client -> server */
    int tls13;
    int alpn;
    int corrupt;                /* CORRUPT_: what may be done to one batch */
    int corrupted;
    int must_fail;              /* the corrupted batch must fail the server */
    int cl_dead;                /* the client failed (allowed after what we did) */
    int cl_may_fail;
    int cl_eof;
    int cl_closed;              /* the client sent close_notify */
    int srv_shut;               /* tls_conn_shutdown was called */
    int srv_write_failed;
    int key_updates;
    buf_t c_sent;               /* plaintext the client wrote */
    buf_t s_sent;               /* plaintext the server wrote */
    size_t cl_got;              /* of s_sent, read by the client */
    recs_t c_recs;
} sess_t;

static const struct {
    const unsigned char *p;
    unsigned int len;
} alpn_offers[] = {
    { NULL, 0 },
    { (const unsigned char *)"\x08http/1.1", 9 },
    { (const unsigned char *)"\x02h2\x08http/1.1", 12 },
    { (const unsigned char *)"\x02h2", 3 },
};

/* Takes what the client wrote. */
static void cl_take(sess_t *s, buf_t *b)
{
    uint8_t chunk[4096];
    int n;
    while ((n = BIO_read(s->cl_out, chunk, sizeof(chunk))) > 0) {
        recs_feed(&s->c_recs, chunk, (size_t)n);
        CHECK(buf_append(b, chunk, (size_t)n) == 0);
    }
}

/* The client's pending output (handshake, alerts, key updates) to the
 * server, untouched. */
static void cl_flush(sess_t *s)
{
    buf_t b = { 0 };
    cl_take(s, &b);
    if (b.len > 0) {
        srv_deliver(&s->srv, (const uint8_t *)b.data, b.len);
    }
    buf_free(&b);
}

/* The server's output to the client. */
static void srv_to_client(sess_t *s)
{
    if (s->srv.out.len > 0) {
        CHECK(BIO_write(s->cl_in, s->srv.out.data, (int)s->srv.out.len) == (int)s->srv.out.len);
        buf_consume(&s->srv.out, s->srv.out.len);
    }
}

/* The client reads what the server sent: it must be what the server wrote. */
static void cl_read(sess_t *s)
{
    srv_to_client(s);
    while (!s->cl_dead && !s->cl_eof) {
        uint8_t buf[16384];
        size_t got = 0;
        if (SSL_read_ex(s->cl, buf, sizeof(buf), &got) == 1) {
            CHECK(s->cl_got + got <= s->s_sent.len);
            CHECK(memcmp(s->s_sent.data + s->cl_got, buf, got) == 0);
            s->cl_got += got;
            continue;
        }
        int e = SSL_get_error(s->cl, 0);
        if (e == SSL_ERROR_WANT_READ) {
            break;
        }
        if (e == SSL_ERROR_ZERO_RETURN) {
            /* close_notify comes after everything the server wrote. */
            CHECK(s->srv_shut);
            CHECK(s->cl_got == s->s_sent.len);
            s->cl_eof = 1;
            stats[ST_CL_EOF]++;
            break;
        }
        /* The client fails only on an alert we provoked. */
        CHECK(s->srv.status != 0 || s->cl_may_fail);
        s->cl_dead = 1;
        ERR_clear_error();
    }
    /* Reading may have made the client answer (a key update, an alert). */
    cl_flush(s);
}

static int sess_start(sess_t *s, uint8_t flags, SSL_SESSION *resume)
{
    memset(s, 0, sizeof(*s));
    if (srv_start(&s->srv) != 0) {
        return -1;
    }
    s->srv.expect = &s->c_sent;
    s->srv.may_pause = next_rand() % 2;
    s->srv.small_caps = next_rand() % 4 == 0;
    s->tls13 = (flags >> 1) & 1;
    s->alpn = (flags >> 2) & 3;
    s->corrupt = (flags >> 5) & 3;
    s->cl = SSL_new(client_ctx);
    s->cl_in = BIO_new(BIO_s_mem());
    s->cl_out = BIO_new(BIO_s_mem());
    CHECK(s->cl != NULL && s->cl_in != NULL && s->cl_out != NULL);
    SSL_set_bio(s->cl, s->cl_in, s->cl_out);
    int v = s->tls13 ? TLS1_3_VERSION : TLS1_2_VERSION;
    CHECK(SSL_set_min_proto_version(s->cl, v) == 1 && SSL_set_max_proto_version(s->cl, v) == 1);
    if (alpn_offers[s->alpn].p != NULL) {
        CHECK(SSL_set_alpn_protos(s->cl, alpn_offers[s->alpn].p, alpn_offers[s->alpn].len) == 0);
    }
    if (resume != NULL) {
        CHECK(SSL_set_session(s->cl, resume) == 1);
    }
    SSL_set_connect_state(s->cl);

    /* The handshake: flights back and forth until both sides are done. */
    for (int step = 0; step < 16; step++) {
        if (SSL_is_init_finished(s->cl) && tls_conn_established(s->srv.tc)) {
            break;
        }
        if (!SSL_is_init_finished(s->cl)) {
            int rc = SSL_do_handshake(s->cl);
            if (rc != 1) {
                CHECK(SSL_get_error(s->cl, rc) == SSL_ERROR_WANT_READ);
            }
        }
        cl_flush(s);
        CHECK(s->srv.status == 0);
        srv_to_client(s);
    }
    CHECK(SSL_is_init_finished(s->cl) && tls_conn_established(s->srv.tc));
    CHECK(SSL_version(s->cl) == v);

    /* tls_alpn: http/1.1 when offered, else nothing (never h2). */
    const unsigned char *sel = NULL;
    unsigned int sel_len = 0;
    SSL_get0_alpn_selected(s->cl, &sel, &sel_len);
    if (s->alpn == 1 || s->alpn == 2) {
        CHECK(sel_len == 8 && memcmp(sel, "http/1.1", 8) == 0);
    } else {
        CHECK(sel_len == 0);
    }
    /* The tickets (TLS 1.3) arrive after the handshake. */
    cl_read(s);
    CHECK(!s->cl_dead);
    return 0;
}

static void sess_end(sess_t *s)
{
    srv_end(&s->srv, !s->srv_write_failed);
    SSL_free(s->cl);            /* frees both BIOs */
    buf_free(&s->c_sent);
    buf_free(&s->s_sent);
    ERR_clear_error();
}

/* Whether the client may still write and the server still read. */
static int sess_alive(const sess_t *s)
{
    return s->srv.status == 0 && !s->cl_dead && !s->cl_closed && !s->srv_write_failed;
}

/* Offset of the record holding byte pos of a well-formed batch; *hdr_off
 * gets pos's offset in that record (0-4: its header). */
static size_t rec_of(const buf_t *b, size_t pos, size_t *rec_len, size_t *hdr_off)
{
    size_t off = 0;
    for (;;) {
        size_t len = 5 + ((size_t)(uint8_t)b->data[off + 3] << 8 | (uint8_t)b->data[off + 4]);
        if (pos < off + len) {
            *rec_len = len;
            *hdr_off = pos - off;
            return off;
        }
        off += len;
    }
}

/* The client writes msg; its records reach the server, perhaps damaged. */
static void cl_write(sess_t *s, const uint8_t *msg, size_t len)
{
    if (len == 0 || !sess_alive(s)) {
        return;
    }
    size_t w = 0;
    CHECK(SSL_write_ex(s->cl, msg, len, &w) == 1 && w == len);
    size_t before = s->c_sent.len;
    CHECK(buf_append(&s->c_sent, msg, len) == 0);
    buf_t b = { 0 };
    cl_take(s, &b);
    CHECK(b.len > 0);
    if (s->corrupt != CORRUPT_NONE && !s->corrupted && !s->srv_shut && next_rand() % 8 == 0) {
        size_t pos = next_rand() % b.len, rec_len, hdr_off;
        size_t rec = rec_of(&b, pos, &rec_len, &hdr_off);
        s->corrupted = 1;
        stats[ST_CORRUPTED]++;
        /* Records wholly before the damage decrypt; nothing after it may. */
        s->srv.limit = before + len;
        if (s->corrupt == CORRUPT_FLIP) {
            size_t old_len = (size_t)(uint8_t)b.data[rec + 3] << 8 | (uint8_t)b.data[rec + 4];
            b.data[pos] ^= (char)(1u << (next_rand() % 8));
            size_t new_len = (size_t)(uint8_t)b.data[rec + 3] << 8 | (uint8_t)b.data[rec + 4];
            /* A longer length only makes the server wait for more. */
            s->must_fail = hdr_off < 3 || hdr_off > 4 || new_len < old_len;
        } else if (s->corrupt == CORRUPT_TRUNCATE) {
            b.len = pos;
            s->must_fail = 0;
        } else {
            /* A replayed record: its sequence number is wrong. */
            char *copy = malloc(rec_len);
            CHECK(copy != NULL);
            memcpy(copy, b.data + rec, rec_len);
            buf_t d = { 0 };
            CHECK(buf_append(&d, b.data, rec + rec_len) == 0);
            CHECK(buf_append(&d, copy, rec_len) == 0);
            CHECK(buf_append(&d, b.data + rec + rec_len, b.len - rec - rec_len) == 0);
            free(copy);
            buf_free(&b);
            b = d;
            s->must_fail = 1;
        }
        s->cl_may_fail = 1;     /* the server's alert ends the client */
    }
    srv_deliver(&s->srv, (const uint8_t *)b.data, b.len);
    buf_free(&b);
    if (s->corrupted && s->must_fail) {
        CHECK(s->srv.status == TLS_FAILED);
        stats[ST_CORRUPT_FAILED]++;
        s->must_fail = 0;
    }
    if (!s->corrupted && s->srv.status == 0 && !s->srv_shut) {
        CHECK(s->srv.got == s->c_sent.len);
    }
}

/* The server writes msg (conn_tls_encrypt); the client must read it. */
static void srv_write(sess_t *s, const uint8_t *msg, size_t len, int fail)
{
    if (len == 0 || s->srv.status != 0 || s->srv_write_failed) {
        return;
    }
    s->srv.fail_next = fail;
    int rc = tls_conn_write(s->srv.tc, msg, len);
    s->srv.fail_next = 0;
    if (fail || s->srv_shut) {
        /* Nothing may be written after close_notify; a lost record ends
         * the conn (conn.c aborts). */
        CHECK(rc == -1);
        char why[256];
        tls_error(why, sizeof(why));
        s->srv_write_failed = fail;
        return;
    }
    CHECK(rc == 0);
    CHECK(buf_append(&s->s_sent, msg, len) == 0);
    stats[ST_BYTES_OUT] += len;
    cl_read(s);
    if (!s->cl_dead) {
        CHECK(s->cl_got == s->s_sent.len);
    }
}

/* The bytes of a message: len bytes of the input from off, cycled. */
static void fill(uint8_t *dst, size_t len, const uint8_t *data, size_t size, size_t off)
{
    if (size == 0) {
        memset(dst, 'x', len);
        return;
    }
    off %= size;
    while (len > 0) {
        size_t take = size - off < len ? size - off : len;
        memcpy(dst, data + off, take);
        dst += take;
        len -= take;
        off = 0;
    }
}

/*
 * The operations, one byte each (op % 8) plus a length byte where needed:
 *   0-3  the client writes a message: op & 0x80 ? (L + 1) * 128 bytes of
 *        the input, cycled : the next L input bytes
 *   4    the server writes (L + 1) * (op & 0x80 ? 128 : 1) bytes; with
 *        op & 0x70 == 0x70 its output fails (out of memory)
 *   5    TLS 1.3: the client updates its keys (op & 0x10: asking the
 *        server to update too); TLS 1.2: the client tries to renegotiate
 *   6    the server shuts down (close_notify)
 *   7    op & 0x80: the certificate is swapped (tls_swap, once); else the client
 *        shuts down and the server must read everything, then TLS_EOF
 */
static void run_ops(sess_t *s, const uint8_t *data, size_t size, int *swapped)
{
    static uint8_t msg[256 * 128];
    size_t off = 0;
    /* Past a few records' worth of traffic, more bytes find nothing new
     * and only slow the executions down. */
    for (int ops = 0; ops < 32 && off < size && sess_alive(s) && s->c_sent.len + s->s_sent.len < PLAIN_MAX;
         ops++) {
        uint8_t op = data[off++];
        uint8_t l = 0;
        if (op % 8 <= 4 && off < size) {
            l = data[off++];
        }
        switch (op % 8) {
        case 0: case 1: case 2: case 3: {
            size_t len;
            if (op & 0x80) {
                len = ((size_t)l + 1) * 128;
                fill(msg, len, data, size, off);
            } else {
                len = l < size - off ? l : size - off;
                fill(msg, len, data, size, off);
                off += len;
            }
            cl_write(s, msg, len);
            break;
        }
        case 4: {
            size_t len = ((size_t)l + 1) * (op & 0x80 ? 128 : 1);
            fill(msg, len, data, size, off);
            srv_write(s, msg, len, (op & 0x70) == 0x70);
            break;
        }
        case 5:
            if (s->tls13) {
                /* Each update derives new keys: a few make the point. */
                if (++s->key_updates > 4) {
                    break;
                }
                CHECK(SSL_key_update(s->cl, op & 0x10 ? SSL_KEY_UPDATE_REQUESTED
                                                      : SSL_KEY_UPDATE_NOT_REQUESTED) == 1);
                CHECK(SSL_do_handshake(s->cl) == 1);
                stats[ST_KEYUPDATE]++;
                cl_flush(s);
                /* The server's own update (when asked) reaches the client. */
                cl_read(s);
                CHECK(s->corrupted || s->srv_shut || s->srv.status == 0);
            } else {
                /* Refused (SSL_OP_NO_RENEGOTIATION): the client gives up. */
                CHECK(SSL_renegotiate(s->cl) == 1);
                stats[ST_RENEG]++;
                int rc = SSL_do_handshake(s->cl);
                CHECK(rc != 1);
                ERR_clear_error();
                cl_flush(s);
                s->cl_may_fail = 1;
                cl_read(s);
                return;         /* the client is in a handshake of its own */
            }
            break;
        case 6:
            if (!s->srv_shut) {
                tls_conn_shutdown(s->srv.tc);
                CHECK(ERR_peek_error() == 0);
                s->srv_shut = 1;
                stats[ST_SRV_SHUT]++;
                cl_read(s);
                CHECK(s->cl_dead || s->cl_eof);
            }
            break;
        case 7:
            if (op & 0x80) {
                /* Building a context takes milliseconds: one per input. */
                if (*swapped) {
                    break;
                }
                char err[256];
                CHECK(tls_swap(tls, &pem, err, sizeof(err)) == 0);
                *swapped = 1;
                stats[ST_SWAP]++;
                break;
            }
            CHECK(SSL_shutdown(s->cl) >= 0);
            cl_flush(s);
            s->cl_closed = 1;
            if (!s->corrupted && !s->srv_shut) {
                CHECK(s->srv.status == TLS_EOF);
                CHECK(s->srv.got == s->c_sent.len);
            }
            return;
        }
    }
}

/* The server as every input finds it: its context (ticket keys included)
 * built from the same random bytes, so that no input depends on the
 * certificate swaps of the ones before. */
#define CANON_SEED UINT64_C(0x9e3779b97f4a7c15)

static void canon_swap(void)
{
    uint64_t saved = ossl_rng;
    char err[256];
    ossl_rng = CANON_SEED;
    CHECK(tls_swap(tls, &pem, err, sizeof(err)) == 0);
    ossl_rng = saved;
}

/* A ticket per version (TLS 1.2, 1.3) from a full handshake, for the
 * sessions that resume: a resumed handshake skips the certificate and
 * its signature, which is most of what a session costs. Taken again when
 * old, so that it never outlives the server's ticket lifetime. */
static SSL_SESSION *tickets[2];
static time_t tickets_at[2];

static SSL_SESSION *ticket_get(int tls13)
{
    time_t now = time(NULL);
    if (tickets[tls13] != NULL && now - tickets_at[tls13] < 600) {
        return tickets[tls13];
    }
    SSL_SESSION_free(tickets[tls13]);
    /* The input being run must not see this handshake's draws. */
    uint64_t saved = rng, saved_ossl = ossl_rng;
    sess_t s;
    CHECK(sess_start(&s, tls13 ? 0x03 : 0x01, NULL) == 0);
    /* A client that never sent close_notify has OpenSSL drop its session
     * as bad when it is freed. */
    CHECK(SSL_shutdown(s.cl) >= 0);
    cl_flush(&s);
    CHECK(s.srv.status == TLS_EOF);
    tickets[tls13] = SSL_get1_session(s.cl);
    CHECK(tickets[tls13] != NULL && SSL_SESSION_is_resumable(tickets[tls13]));
    tickets_at[tls13] = now;
    sess_end(&s);
    rng = saved;
    ossl_rng = saved_ossl;
    return tickets[tls13];
}

static void run_session(const uint8_t *data, size_t size, uint8_t flags)
{
    sess_t s;
    int swapped = 0;
    /* A private copy: whatever OpenSSL marks on it stays with this run. */
    SSL_SESSION *resume = NULL;
    if (flags & 0x10) {
        resume = SSL_SESSION_dup(ticket_get((flags >> 1) & 1));
        CHECK(resume != NULL);
    }
    if (sess_start(&s, flags, resume) != 0) {
        abort();
    }
    if (resume != NULL) {
        /* Stateless tickets work with the server's session cache off. */
        CHECK(SSL_session_reused(s.cl) == 1);
        stats[ST_RESUMED]++;
    }
    run_ops(&s, data, size, &swapped);
    sess_end(&s);
    SSL_SESSION_free(resume);
    if (swapped) {
        canon_swap();
    }
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    ossl_rng = CANON_SEED;
    if (RAND_set_rand_method(&fz_rand) != 1) {
        abort();
    }
    /* What the master's tls_pem_load hands the workers. */
    if (buf_append(&pem.cert, test_cert, sizeof(test_cert) - 1) != 0 ||
        buf_append(&pem.key, test_key, sizeof(test_key) - 1) != 0) {
        abort();
    }
    char err[256];
    tls = tls_new(&pem, err, sizeof(err));
    if (tls == NULL) {
        fprintf(stderr, "fuzz_tls: tls_new: %s\n", err);
        abort();
    }
    client_ctx = SSL_CTX_new(TLS_client_method());
    if (client_ctx == NULL) {
        abort();
    }
    /* The test certificate is self-signed: the client takes it as is. */
    SSL_CTX_set_verify(client_ctx, SSL_VERIFY_NONE, NULL);
    SSL_CTX_set_session_cache_mode(client_ctx, SSL_SESS_CACHE_OFF);
    rng = 1;
    ticket_get(0);
    ticket_get(1);
    const char *st = getenv("FUZZ_TLS_STATS");
    if (st != NULL && strcmp(st, "1") == 0 && atexit(stats_print) != 0) {
        abort();
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint64_t h = UINT64_C(1469598103934665603);
    for (size_t i = 0; i < size; i++) {
        h = (h ^ data[i]) * UINT64_C(1099511628211);
    }
    rng = h | 1;
    ossl_rng = (h * UINT64_C(0x9e3779b97f4a7c15)) | 1;
    if (size == 0) {
        return 0;
    }
    stats[data[0] & 1 ? ST_SESSION : ST_RAW]++;
    stats[ST_TLS13] += (data[0] & 3) == 3;
    if ((data[0] & 1) == 0) {
        run_raw(data + 1, size - 1);
    } else {
        run_session(data + 1, size - 1, data[0]);
    }
    ERR_clear_error();
    return 0;
}
