#include "tls.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

/* A certificate file or key larger than this is not one. */
#define TLS_PEM_MAX (1 << 20)

struct tls_s {
    SSL_CTX *ctx;
    BIO_METHOD *bio;
};

struct tls_conn_s {
    SSL *ssl;
    tls_out_fn out;
    void *ud;
    const uint8_t *in;          /* ciphertext not yet given to OpenSSL */
    size_t in_len;
    buf_t kept;                 /* in's bytes when they outlive the caller's buffer */
};

void tls_error(char *buf, size_t len)
{
    unsigned long e = ERR_peek_last_error();
    if (len > 0) {
        buf[0] = '\0';
        if (e != 0) {
            ERR_error_string_n(e, buf, len);
        }
    }
    ERR_clear_error();
}

/* Reads a whole small file into b. */
static int tls_read_file(buf_t *b, const char *path, const char *what, char *err, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd == -1) {
        snprintf(err, errlen, "cannot open %s %s: %s", what, path, strerror(errno));
        return -1;
    }
    char chunk[16384];
    for (;;) {
        ssize_t n = read(fd, chunk, sizeof(chunk));
        if (n == 0) {
            break;
        }
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            snprintf(err, errlen, "cannot read %s %s: %s", what, path, strerror(errno));
            close(fd);
            return -1;
        }
        if (b->len + (size_t)n > TLS_PEM_MAX) {
            snprintf(err, errlen, "%s %s is larger than %d bytes", what, path, TLS_PEM_MAX);
            close(fd);
            return -1;
        }
        if (buf_append(b, chunk, (size_t)n) != 0) {
            snprintf(err, errlen, "out of memory reading %s", path);
            close(fd);
            return -1;
        }
    }
    close(fd);
    return 0;
}

/* A key with a passphrase must fail, not prompt on the terminal. */
static int tls_no_passphrase(char *buf, int size, int rwflag, void *u)
{
    (void)buf;
    (void)size;
    (void)rwflag;
    (void)u;
    return 0;
}

/* Puts pem's certificate chain and key into ctx, checking they match. */
static int tls_ctx_use(SSL_CTX *ctx, const tls_pem_t *pem, char *err, size_t errlen)
{
    char why[256];
    BIO *b = BIO_new_mem_buf(pem->cert.data, (int)pem->cert.len);
    if (b == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    X509 *leaf = PEM_read_bio_X509(b, NULL, tls_no_passphrase, NULL);
    if (leaf == NULL) {
        tls_error(why, sizeof(why));
        snprintf(err, errlen, "the certificate file holds no PEM certificate (%s)", why);
        BIO_free(b);
        return -1;
    }
    int rc = SSL_CTX_use_certificate(ctx, leaf);
    X509_free(leaf);
    if (rc != 1) {
        tls_error(why, sizeof(why));
        snprintf(err, errlen, "certificate refused: %s", why);
        BIO_free(b);
        return -1;
    }
    /* What follows the leaf is its chain, in order. */
    X509 *ca;
    int nchain = 0;
    while ((ca = PEM_read_bio_X509(b, NULL, tls_no_passphrase, NULL)) != NULL) {
        nchain++;
        if (SSL_CTX_add0_chain_cert(ctx, ca) != 1) {
            X509_free(ca);
            tls_error(why, sizeof(why));
            snprintf(err, errlen, "chain certificate refused: %s", why);
            BIO_free(b);
            return -1;
        }
    }
    /* The loop ends on "no start line" at the end of the file; anything
     * else is a damaged certificate in the chain. */
    unsigned long e = ERR_peek_last_error();
    if (!(ERR_GET_LIB(e) == ERR_LIB_PEM && ERR_GET_REASON(e) == PEM_R_NO_START_LINE)) {
        tls_error(why, sizeof(why));
        snprintf(err, errlen, "chain certificate %d does not parse (%s)", nchain + 1, why);
        BIO_free(b);
        return -1;
    }
    ERR_clear_error();
    BIO_free(b);

    b = BIO_new_mem_buf(pem->key.data, (int)pem->key.len);
    if (b == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    EVP_PKEY *key = PEM_read_bio_PrivateKey(b, NULL, tls_no_passphrase, NULL);
    BIO_free(b);
    if (key == NULL) {
        tls_error(why, sizeof(why));
        snprintf(err, errlen, "the key file holds no unencrypted PEM private key (%s)", why);
        return -1;
    }
    rc = SSL_CTX_use_PrivateKey(ctx, key);
    EVP_PKEY_free(key);
    if (rc != 1 || SSL_CTX_check_private_key(ctx) != 1) {
        tls_error(why, sizeof(why));
        snprintf(err, errlen, "the key does not belong to the certificate (%s)", why);
        return -1;
    }
    return 0;
}

/* WebSocket runs over HTTP/1.1: a client offering h2 as well must not
 * think it got it. */
static int tls_alpn(SSL *ssl, const unsigned char **out, unsigned char *outlen, const unsigned char *in,
                    unsigned int inlen, void *arg)
{
    static const unsigned char ours[] = "\x08http/1.1";
    (void)ssl;
    (void)arg;
    unsigned char *sel = NULL;
    if (SSL_select_next_proto(&sel, outlen, ours, sizeof(ours) - 1, in, inlen) != OPENSSL_NPN_NEGOTIATED) {
        return SSL_TLSEXT_ERR_NOACK;
    }
    *out = sel;
    return SSL_TLSEXT_ERR_OK;
}

static SSL_CTX *tls_ctx_new(const tls_pem_t *pem, char *err, size_t errlen)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL) {
        snprintf(err, errlen, "SSL_CTX_new failed");
        ERR_clear_error();
        return NULL;
    }
    /* Client-started renegotiation costs the server a handshake each time
     * for nothing; compression leaks plaintext (CRIME). */
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION | SSL_OP_CIPHER_SERVER_PREFERENCE);
    /* Idle connections give their record buffers back. */
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    /* Resumption by stateless tickets only: a server-side session cache
     * would grow with every client and be lost on each reload anyway. */
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_alpn_select_cb(ctx, tls_alpn, NULL);
    if (SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1 || SSL_CTX_set_num_tickets(ctx, 1) != 1 ||
        (pem->has_tickets &&
         SSL_CTX_set_tlsext_ticket_keys(ctx, (void *)pem->tickets, sizeof(pem->tickets)) != 1)) {
        snprintf(err, errlen, "OpenSSL refused the protocol settings");
        ERR_clear_error();
        SSL_CTX_free(ctx);
        return NULL;
    }
    if (tls_ctx_use(ctx, pem, err, errlen) != 0) {
        SSL_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

int tls_pem_load(tls_pem_t *pem, const char *cert_path, const char *key_path, char *err, size_t errlen)
{
    memset(pem, 0, sizeof(*pem));
    if (RAND_bytes(pem->tickets, sizeof(pem->tickets)) != 1) {
        snprintf(err, errlen, "no randomness for the session ticket keys");
        ERR_clear_error();
        return -1;
    }
    pem->has_tickets = 1;
    if (tls_read_file(&pem->cert, cert_path, "certificate", err, errlen) != 0 ||
        tls_read_file(&pem->key, key_path, "key", err, errlen) != 0) {
        tls_pem_free(pem);
        return -1;
    }
    /* Building a context is the check: it parses both and matches them. */
    char why[512];
    SSL_CTX *ctx = tls_ctx_new(pem, why, sizeof(why));
    if (ctx == NULL) {
        snprintf(err, errlen, "%s, %s: %s", cert_path, key_path, why);
        tls_pem_free(pem);
        return -1;
    }
    SSL_CTX_free(ctx);
    return 0;
}

int tls_pem_equal(const tls_pem_t *a, const tls_pem_t *b)
{
    return a->cert.len == b->cert.len && a->key.len == b->key.len &&
           (a->cert.len == 0 || memcmp(a->cert.data, b->cert.data, a->cert.len) == 0) &&
           (a->key.len == 0 || memcmp(a->key.data, b->key.data, a->key.len) == 0);
}

void tls_pem_free(tls_pem_t *pem)
{
    /* The key's bytes do not linger in freed heap. */
    if (pem->key.data != NULL) {
        OPENSSL_cleanse(pem->key.data, pem->key.cap);
    }
    OPENSSL_cleanse(pem->tickets, sizeof(pem->tickets));
    pem->has_tickets = 0;
    buf_free(&pem->cert);
    buf_free(&pem->key);
}

/* The BIO between OpenSSL and the conn. */

static int tls_bio_write(BIO *b, const char *data, size_t len, size_t *written)
{
    tls_conn_t *tc = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    if (tc->out(tc->ud, (const uint8_t *)data, len) != 0) {
        return 0;
    }
    *written = len;
    return 1;
}

static int tls_bio_read(BIO *b, char *data, size_t len, size_t *got)
{
    tls_conn_t *tc = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    if (tc->in_len == 0) {
        BIO_set_retry_read(b);
        return 0;
    }
    size_t n = len < tc->in_len ? len : tc->in_len;
    memcpy(data, tc->in, n);
    tc->in += n;
    tc->in_len -= n;
    *got = n;
    return 1;
}

static long tls_bio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    (void)b;
    (void)num;
    (void)ptr;
    /* Records leave as they are written: nothing to flush. */
    return cmd == BIO_CTRL_FLUSH ? 1 : 0;
}

static int tls_bio_create(BIO *b)
{
    BIO_set_init(b, 1);
    return 1;
}

tls_t *tls_new(const tls_pem_t *pem, char *err, size_t errlen)
{
    tls_t *t = calloc(1, sizeof(*t));
    if (t == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    t->bio = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "chatd conn");
    if (t->bio == NULL || BIO_meth_set_write_ex(t->bio, tls_bio_write) != 1 ||
        BIO_meth_set_read_ex(t->bio, tls_bio_read) != 1 || BIO_meth_set_ctrl(t->bio, tls_bio_ctrl) != 1 ||
        BIO_meth_set_create(t->bio, tls_bio_create) != 1) {
        snprintf(err, errlen, "cannot make the BIO method");
        ERR_clear_error();
        tls_free(t);
        return NULL;
    }
    t->ctx = tls_ctx_new(pem, err, errlen);
    if (t->ctx == NULL) {
        tls_free(t);
        return NULL;
    }
    return t;
}

int tls_swap(tls_t *t, const tls_pem_t *pem, char *err, size_t errlen)
{
    SSL_CTX *ctx = tls_ctx_new(pem, err, errlen);
    if (ctx == NULL) {
        return -1;
    }
    unsigned char keys[TLS_TICKET_KEYS];
    int kept = SSL_CTX_get_tlsext_ticket_keys(t->ctx, keys, sizeof(keys)) == 1 &&
               SSL_CTX_set_tlsext_ticket_keys(ctx, keys, sizeof(keys)) == 1;
    OPENSSL_cleanse(keys, sizeof(keys));
    if (!kept) {
        snprintf(err, errlen, "cannot carry the session ticket keys over");
        ERR_clear_error();
        SSL_CTX_free(ctx);
        return -1;
    }
    /* Each SSL holds a reference to its context: the old one lives on
     * until the last connection made with it is gone. */
    SSL_CTX_free(t->ctx);
    t->ctx = ctx;
    return 0;
}

void tls_free(tls_t *t)
{
    if (t == NULL) {
        return;
    }
    SSL_CTX_free(t->ctx);
    BIO_meth_free(t->bio);
    free(t);
}

tls_conn_t *tls_conn_new(tls_t *t, tls_out_fn out, void *ud)
{
    tls_conn_t *tc = calloc(1, sizeof(*tc));
    if (tc == NULL) {
        return NULL;
    }
    tc->out = out;
    tc->ud = ud;
    tc->ssl = SSL_new(t->ctx);
    BIO *b = tc->ssl != NULL ? BIO_new(t->bio) : NULL;
    if (b == NULL) {
        ERR_clear_error();
        SSL_free(tc->ssl);
        free(tc);
        return NULL;
    }
    BIO_set_data(b, tc);
    /* One BIO both ways: SSL_set_bio takes its one reference. */
    SSL_set_bio(tc->ssl, b, b);
    SSL_set_accept_state(tc->ssl);
    return tc;
}

void tls_conn_free(tls_conn_t *tc)
{
    if (tc == NULL) {
        return;
    }
    SSL_free(tc->ssl);
    buf_free(&tc->kept);
    free(tc);
}

void tls_conn_input(tls_conn_t *tc, const uint8_t *data, size_t len)
{
    if (tc->kept.len > 0) {
        /* Older bytes wait: the new ones go behind them. Out of memory,
         * both are dropped: the gap in the stream makes a later record
         * fail to decrypt, which ends the connection. */
        if (buf_append(&tc->kept, data, len) != 0) {
            tc->in_len = 0;
            buf_free(&tc->kept);
            return;
        }
        tc->in = (const uint8_t *)tc->kept.data;
        tc->in_len = tc->kept.len;
        return;
    }
    tc->in = data;
    tc->in_len = len;
}

int tls_conn_input_done(tls_conn_t *tc)
{
    if (tc->kept.len > 0) {
        /* Reading from kept: drop what was consumed. */
        buf_consume(&tc->kept, tc->kept.len - tc->in_len);
        if (tc->kept.len == 0) {
            buf_free(&tc->kept);
        }
        tc->in = (const uint8_t *)tc->kept.data;
        return 0;
    }
    if (tc->in_len > 0 && buf_append(&tc->kept, tc->in, tc->in_len) != 0) {
        return -1;
    }
    tc->in = (const uint8_t *)tc->kept.data;
    return 0;
}

int tls_conn_has_input(const tls_conn_t *tc)
{
    return tc->in_len > 0 || SSL_pending(tc->ssl) > 0;
}

int tls_conn_established(const tls_conn_t *tc)
{
    return SSL_is_init_finished(tc->ssl);
}

int tls_conn_read(tls_conn_t *tc, uint8_t *buf, size_t cap)
{
    size_t got = 0;
    ERR_clear_error();
    if (SSL_read_ex(tc->ssl, buf, cap, &got) == 1) {
        return (int)got;
    }
    switch (SSL_get_error(tc->ssl, 0)) {
    case SSL_ERROR_WANT_READ:
    case SSL_ERROR_WANT_WRITE:
        return TLS_AGAIN;
    case SSL_ERROR_ZERO_RETURN:
        return TLS_EOF;
    default:
        break;
    }
    /* OpenSSL recognises an HTTP request where a ClientHello should be. */
    unsigned long e = ERR_peek_error();
    if (ERR_GET_LIB(e) == ERR_LIB_SSL && ERR_GET_REASON(e) == SSL_R_HTTP_REQUEST) {
        ERR_clear_error();
        return TLS_PLAINTEXT;
    }
    return TLS_FAILED;
}

int tls_conn_write(tls_conn_t *tc, const uint8_t *data, size_t len)
{
    size_t done = 0;
    ERR_clear_error();
    /* Our BIO never blocks, so OpenSSL writes everything or fails. */
    if (len > 0 && SSL_write_ex(tc->ssl, data, len, &done) != 1) {
        return -1;
    }
    return done == len ? 0 : -1;
}

void tls_conn_shutdown(tls_conn_t *tc)
{
    if (SSL_is_init_finished(tc->ssl)) {
        ERR_clear_error();
        SSL_shutdown(tc->ssl);
        ERR_clear_error();
    }
}
