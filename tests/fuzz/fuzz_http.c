/*
 * fuzz_http: the HTTP request before the upgrade. The input is
 *
 *   4 bytes of chunking control, then the bytes a client sends
 *
 * The request is fed once whole and once in chunks whose sizes come from
 * the control bytes, as partial socket reads would deliver it; both must
 * end the same way (status, consumed bytes, the headers kept). Then the
 * URL is split, the upgrade checked and the query searched, as
 * conn_on_request and auth do.
 */
#include "../../worker/net/http.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(cond) do { \
        if (!(cond)) { \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
            abort(); \
        } \
    } while (0)

#define CONTROL 4

/* The fields kept by http.c must stay NUL-terminated within their arrays:
 * an overflow from one member into the next is invisible to ASan. */
static void check_req(const http_req_t *req)
{
    CHECK(req->url_len <= HTTP_MAX_URL && req->url[req->url_len] == '\0');
    CHECK(req->field_len < sizeof(req->field));
    CHECK(req->upgrade_len <= HTTP_MAX_VALUE && req->upgrade[req->upgrade_len] == '\0');
    CHECK(req->connection_len <= HTTP_MAX_VALUE && req->connection[req->connection_len] == '\0');
    CHECK(req->ws_key_len <= HTTP_MAX_VALUE && req->ws_key[req->ws_key_len] == '\0');
    CHECK(req->ws_version_len <= HTTP_MAX_VALUE && req->ws_version[req->ws_version_len] == '\0');
    CHECK(req->header_bytes <= HTTP_MAX_HEADER_BYTES);
    CHECK(req->content_type_len <= HTTP_MAX_VALUE && req->content_type[req->content_type_len] == '\0');
    CHECK(req->range_len <= HTTP_MAX_VALUE && req->range[req->range_len] == '\0');
    CHECK(req->expect_len <= HTTP_MAX_VALUE && req->expect[req->expect_len] == '\0');
    CHECK(req->authorization_len <= HTTP_MAX_AUTH && req->authorization[req->authorization_len] == '\0');
}

/* A body as http_req_body() hands it over. */
typedef struct {
    uint8_t *data;
    size_t len, cap;
} body_t;

static int body_take(void *ud, const char *data, size_t len)
{
    body_t *b = ud;
    CHECK(b->len + len <= b->cap);     /* never more than was fed */
    memcpy(b->data + b->len, data, len);
    b->len += len;
    return 0;
}

/* Feeds the bytes after the headers as the body, whole or in chunks. */
static http_status_t feed_body(http_req_t *req, const uint8_t *data, size_t len, const uint8_t *ctl,
                               body_t *b)
{
    b->cap = len;
    b->len = 0;
    b->data = malloc(len + 1);
    req->on_body = body_take;
    req->body_ud = b;
    http_status_t st = HTTP_AGAIN;
    size_t off = 0, k = 0;
    if (len == 0) {
        return http_req_body(req, (const char *)data, 0);
    }
    while (off < len && st == HTTP_AGAIN) {
        size_t n = len - off;
        if (ctl != NULL) {
            uint8_t c = ctl[k++ % CONTROL];
            n = (size_t)(c & 0x3f) + 1 < n ? (size_t)(c & 0x3f) + 1 : n;
        }
        char *chunk = malloc(n);
        memcpy(chunk, data + off, n);
        st = http_req_body(req, chunk, n);
        free(chunk);
        off += n;
    }
    return st;
}

/*
 * Feeds data[0..len) in chunks (ctl == NULL: one chunk). Returns the final
 * status and sets *consumed to the request's length when done.
 */
static http_status_t feed(http_req_t *req, const uint8_t *data, size_t len,
                          const uint8_t *ctl, size_t *consumed)
{
    size_t off = 0;
    size_t k = 0;
    http_status_t st = HTTP_AGAIN;
    *consumed = 0;
    http_req_init(req);
    while (off < len) {
        size_t n = len - off;
        if (ctl != NULL) {
            /* Small chunks mostly, so boundaries fall inside tokens. */
            uint8_t c = ctl[k++ % CONTROL];
            size_t want = (c & 0x80) ? (size_t)(c & 0x7f) * 64 + 1 : (size_t)(c & 0x1f) + 1;
            n = want < n ? want : n;
        }
        /* Each chunk in its own exact-size buffer, like a socket read. */
        char *chunk = malloc(n);
        if (chunk == NULL) {
            return HTTP_BAD;
        }
        memcpy(chunk, data + off, n);
        size_t used = (size_t)-1;
        st = http_req_feed(req, chunk, n, &used);
        free(chunk);
        check_req(req);
        CHECK(st == HTTP_AGAIN || st == HTTP_DONE || st == HTTP_BAD || st == HTTP_TOO_BIG);
        if (st == HTTP_DONE) {
            CHECK(used <= n);
            *consumed = off + used;
            CHECK(*consumed <= len);
            return st;
        }
        if (st != HTTP_AGAIN) {
            return st;
        }
        off += n;
    }
    return st;
}

/* http_query_get into an exact-size heap buffer of outlen bytes. */
static void query_get(const char *query, const char *name, size_t outlen)
{
    char *out = malloc(outlen);
    if (out == NULL) {
        return;
    }
    int n = http_query_get(query, name, out, outlen);
    CHECK(n >= -2);
    if (n >= 0) {
        CHECK((size_t)n < outlen && strlen(out) == (size_t)n);
    }
    free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < CONTROL) {
        return 0;
    }
    const uint8_t *ctl = data;
    data += CONTROL;
    size -= CONTROL;

    http_req_t *whole = malloc(sizeof(*whole));
    http_req_t *parts = malloc(sizeof(*parts));
    if (whole == NULL || parts == NULL) {
        free(whole);
        free(parts);
        return 0;
    }
    size_t used_whole, used_parts;
    http_status_t st_whole = feed(whole, data, size, NULL, &used_whole);
    http_status_t st_parts = feed(parts, data, size, ctl, &used_parts);

    /* Partial reads must not change the outcome. BAD and TOO_BIG may only
     * differ in which limit is hit first when the request is cut. */
    if (st_whole == HTTP_DONE || st_parts == HTTP_DONE) {
        if (st_whole != st_parts || used_whole != used_parts) {
            fprintf(stderr, "whole: status %d consumed %zu; in chunks: status %d consumed %zu\n",
                    st_whole, used_whole, st_parts, used_parts);
            abort();
        }
        CHECK(whole->method == parts->method);
        CHECK(strcmp(whole->url, parts->url) == 0);
        CHECK(strcmp(whole->upgrade, parts->upgrade) == 0);
        CHECK(strcmp(whole->connection, parts->connection) == 0);
        CHECK(strcmp(whole->ws_key, parts->ws_key) == 0);
        CHECK(strcmp(whole->ws_version, parts->ws_version) == 0);
        CHECK(whole->dup_key == parts->dup_key);
    }

    /* A request with a body: the decoded body (chunked or not) and where
     * it ends do not depend on how the bytes arrive either. */
    if (st_whole == HTTP_DONE && whole->has_body) {
        CHECK(whole->content_length == parts->content_length);
        body_t bw, bp;
        http_status_t sw = feed_body(whole, data + used_whole, size - used_whole, NULL, &bw);
        http_status_t sp = feed_body(parts, data + used_parts, size - used_parts, ctl, &bp);
        CHECK(sw == sp);
        /* (Bytes before an error may be reported or not, by where the
         * read that held the error began.) */
        CHECK(sw == HTTP_BAD || (bw.len == bp.len && memcmp(bw.data, bp.data, bw.len) == 0));
        if (sw == HTTP_DONE && whole->content_length >= 0) {
            CHECK(bw.len == (size_t)whole->content_length);
        }
        free(bw.data);
        free(bp.data);
    }

    if (st_whole == HTTP_DONE) {
        const char *why = NULL;
        int up = http_req_check_upgrade(whole, &why);
        CHECK(up == 0 || (up == -1 && why != NULL));
        /* conn_upgrade computes it only for a valid key; any key the
         * parser kept must still be safe. */
        char accept[29];
        CHECK(http_ws_accept(whole->ws_key, accept) == 0);
        CHECK(strlen(accept) == 28);
        const char *path = NULL, *query = NULL;
        http_req_split(whole, &path, &query);
        CHECK(path == whole->url && query != NULL);
        CHECK(strchr(path, '?') == NULL);
        /* The sizes auth uses, and tiny ones for the bound checks. */
        query_get(query, "user", 64 + 2);
        query_get(query, "token", 4096 + 1);
        query_get(query, "user", 1);
        query_get(query, "token", 1 + (ctl[0] & 15));
        query_get(query, "", 8);
    }
    /* Whatever came in, the server may still answer; the head must fit. */
    static const int statuses[] = { 101, 200, 304, 400, 401, 403, 404, 405, 429, 431,
                                    500, 503, 599 };
    char head[2048];
    int n = http_response_head(head, sizeof(head),
                               statuses[ctl[1] % (sizeof(statuses) / sizeof(statuses[0]))],
                               "text/plain", "Sec-WebSocket-Version: 13\r\n", size);
    CHECK(n > 0 && (size_t)n < sizeof(head));

    free(whole);
    free(parts);
    return 0;
}
