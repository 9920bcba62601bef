/*
 * http: the one HTTP request a connection makes before it upgrades or is
 * answered and closed. Parsing is llhttp's; this module keeps what chatd
 * needs of the request (method, path, query, the upgrade headers) and
 * writes the few responses the server gives.
 */
#ifndef CHATD_HTTP_H
#define CHATD_HTTP_H

#include <stddef.h>
#include <stdint.h>

#include <llhttp.h>

#define HTTP_MAX_HEADER_BYTES 8192
#define HTTP_MAX_URL 4096
#define HTTP_MAX_VALUE 256
#define HTTP_MAX_AUTH 4200      /* "Bearer " and a token of AUTH_TOKEN_MAX */

typedef struct http_req_s http_req_t;

/* Where a request's body goes once the reader of it asked for it
 * (http_req_body); data returns 0, or -1 to stop the parse. */
typedef int http_body_cb_t(void *ud, const char *data, size_t len);

typedef enum {
    HTTP_AGAIN = 0,     /* headers not complete yet */
    HTTP_DONE = 1,      /* headers complete */
    HTTP_BAD = -1,      /* malformed: answer 400 */
    HTTP_TOO_BIG = -2   /* headers too large: answer 431 */
} http_status_t;

struct http_req_s {
    llhttp_t parser;
    size_t header_bytes;
    int method;                 /* llhttp_method_t */
    int complete;
    char url[HTTP_MAX_URL + 1];
    size_t url_len;
    char field[64];             /* the header being read, lower-cased */
    size_t field_len;
    int field_overflow;
    char *value;                /* where the current header's value goes, or NULL */
    size_t *value_len;
    size_t value_cap;
    char upgrade[HTTP_MAX_VALUE + 1];
    size_t upgrade_len;
    char connection[HTTP_MAX_VALUE + 1];
    size_t connection_len;
    char ws_key[HTTP_MAX_VALUE + 1];
    size_t ws_key_len;
    char ws_version[HTTP_MAX_VALUE + 1];
    size_t ws_version_len;
    int dup_key;                /* Sec-WebSocket-Key given twice */
    int key_seen;
    char ws_extensions[512 + 1];    /* Sec-WebSocket-Extensions offers */
    size_t ws_extensions_len;
    char content_type[HTTP_MAX_VALUE + 1];
    size_t content_type_len;
    char range[HTTP_MAX_VALUE + 1];
    size_t range_len;
    char expect[HTTP_MAX_VALUE + 1];
    size_t expect_len;
    char authorization[HTTP_MAX_AUTH + 1];
    size_t authorization_len;
    int has_body;               /* a request that may carry a body (not GET/HEAD) */
    int64_t content_length;     /* declared, or -1 (none, or chunked) */
    int body_done;              /* the whole body went through on_body */
    http_body_cb_t *on_body;
    void *body_ud;
    /* The exchange that took the request over (conn.c), while it lasts. */
    const void *exchange;
    void *exchange_ud;
    int body_paused;
};

/* Initializes req for a new request. req is caller-owned memory. */
void http_req_init(http_req_t *req);

/*
 * Feeds len bytes. Returns HTTP_AGAIN, HTTP_DONE (then *consumed is how
 * many of the bytes belong to the request; the rest are WebSocket frames),
 * HTTP_BAD or HTTP_TOO_BIG.
 */
http_status_t http_req_feed(http_req_t *req, const char *data, size_t len, size_t *consumed);

/*
 * Feeds len bytes of the body of a request that has one (has_body; the
 * headers are done): decoded body bytes (chunked or not) go to on_body.
 * Returns HTTP_AGAIN when more is expected, HTTP_DONE when the body is
 * complete (bytes after it are not parsed) or HTTP_BAD.
 */
http_status_t http_req_body(http_req_t *req, const char *data, size_t len);

/* The declared Content-Length, or -1 when there is none (chunked). */
int64_t http_req_content_length(const http_req_t *req);

/* Whether the client waits for "100 Continue" before sending the body. */
int http_req_expects_continue(const http_req_t *req);

/* The path of the URL (without query) and the query (without '?'); both
 * point into req->url after http_req_split(). */
void http_req_split(http_req_t *req, const char **path, const char **query);

/*
 * Checks the upgrade headers (RFC 6455 section 4.2.1). Returns 0 when this
 * is a valid WebSocket upgrade, else -1 with a reason in *why.
 */
int http_req_check_upgrade(const http_req_t *req, const char **why);

/*
 * Finds name in a query string and URL-decodes its value into out.
 * Returns the decoded length, -1 when absent, -2 when malformed or too long.
 */
int http_query_get(const char *query, const char *name, char *out, size_t outlen);

/* Computes Sec-WebSocket-Accept for key into out (29 bytes incl. NUL).
 * Returns 0 or -1. */
int http_ws_accept(const char *key, char out[29]);

/*
 * Formats the head of a response with Connection: close for a body of
 * body_len bytes into buf. Returns its length, or -1 if it does not fit.
 */
int http_response_head(char *buf, size_t buflen, int status, const char *content_type,
                       const char *extra_headers, size_t body_len);

#endif
