/*
 * tls: TLS for the net wing, OpenSSL driven over the libuv loop. OpenSSL
 * never touches a socket: a BIO of our own hands it the ciphertext the
 * conn just read (borrowed from the worker's read buffer, copied only when
 * some is left unread) and gives every record it writes straight to the
 * conn's output, so an idle TLS connection holds no buffer of ours, and
 * OpenSSL's own are released between records (SSL_MODE_RELEASE_BUFFERS).
 *
 * tls_pem_t is the certificate and key as files hold them; the master
 * loads and checks them before any worker needs them, and a worker builds
 * its SSL_CTX from that copy. A certificate swap builds a new SSL_CTX:
 * connections already made keep a reference to the old one and go on.
 */
#ifndef CHATD_TLS_H
#define CHATD_TLS_H

#include <stddef.h>
#include <stdint.h>

#include "../../common/buf.h"

/* Session ticket keys: a name, an HMAC secret, an AES key. */
#define TLS_TICKET_KEYS 80

typedef struct tls_pem_s {
    buf_t cert;                 /* PEM: the leaf, then any chain */
    buf_t key;                  /* PEM private key */
    /* Made by the master and inherited by every worker, so that a ticket
     * one worker issued resumes on any other (the kernel spreads a
     * client's connections over the workers); unset, each context makes
     * its own. */
    uint8_t tickets[TLS_TICKET_KEYS];
    int has_tickets;
} tls_pem_t;

/*
 * Reads both files and checks that the certificate parses and the key is
 * its own; makes fresh ticket keys. Returns 0, or -1 with a message in err
 * (pem is then empty).
 */
int tls_pem_load(tls_pem_t *pem, const char *cert_path, const char *key_path, char *err, size_t errlen);

/* Whether a and b hold the same certificate and key (tickets aside). */
int tls_pem_equal(const tls_pem_t *a, const tls_pem_t *b);

void tls_pem_free(tls_pem_t *pem);

/* A worker's TLS server: its SSL_CTX and our BIO method. */
typedef struct tls_s tls_t;

/* Returns a server for pem, or NULL with a message in err. */
tls_t *tls_new(const tls_pem_t *pem, char *err, size_t errlen);

/* New handshakes use pem's certificate from now on; connections made
 * keep theirs. The ticket keys stay t's, so tickets issued before resume
 * after. Returns 0, or -1 with a message in err (the old certificate
 * stays). */
int tls_swap(tls_t *t, const tls_pem_t *pem, char *err, size_t errlen);

void tls_free(tls_t *t);

/* Where a connection's ciphertext goes: returns 0, or -1 when it could
 * not be queued (out of memory). */
typedef int (*tls_out_fn)(void *ud, const uint8_t *bytes, size_t len);

typedef struct tls_conn_s tls_conn_t;

/* One server-side TLS connection; NULL when out of memory. */
tls_conn_t *tls_conn_new(tls_t *t, tls_out_fn out, void *ud);

void tls_conn_free(tls_conn_t *tc);

/* What tls_conn_read() found besides plaintext. */
enum {
    TLS_AGAIN = 0,              /* all input consumed: wait for more */
    TLS_EOF = -1,               /* the peer sent close_notify */
    TLS_FAILED = -2,            /* bad input or a failed handshake */
    TLS_PLAINTEXT = -3          /* the peer spoke plain HTTP to the TLS port */
};

/*
 * Ciphertext arrived: kept by reference until tls_conn_input_done(), so
 * the caller's buffer must stay put meanwhile.
 */
void tls_conn_input(tls_conn_t *tc, const uint8_t *data, size_t len);

/* Decrypts up to cap bytes of plaintext into buf (the handshake is run
 * along the way). Returns the bytes, or one of the TLS_ codes above. */
int tls_conn_read(tls_conn_t *tc, uint8_t *buf, size_t cap);

/* The caller stops reading for now: ciphertext not yet consumed is copied
 * so that the caller's buffer may be reused. Returns 0 or -1 (out of
 * memory). */
int tls_conn_input_done(tls_conn_t *tc);

/* Whether ciphertext is waiting to be read (kept by tls_conn_input_done). */
int tls_conn_has_input(const tls_conn_t *tc);

/* Whether the handshake has finished. */
int tls_conn_established(const tls_conn_t *tc);

/* Encrypts len bytes as records (the output function gets them). Returns
 * 0 or -1. */
int tls_conn_write(tls_conn_t *tc, const uint8_t *data, size_t len);

/* Queues close_notify (best effort; nothing is waited for). */
void tls_conn_shutdown(tls_conn_t *tc);

/* Describes (for the log) and clears what OpenSSL reported about the last
 * failure; "" when it said nothing. */
void tls_error(char *buf, size_t len);

#endif
