/* Unit tests of worker/net/http: request parsing, upgrade checks, queries. */
#include "unit.h"

#include "../../worker/net/http.h"

#define KEY "dGhlIHNhbXBsZSBub25jZQ=="

static const char upgrade_req[] =
    "GET /ws?user=alice&x=1 HTTP/1.1\r\n"
    "Host: localhost:8080\r\n"
    "Upgrade: websocket\r\n"
    "Connection: Upgrade\r\n"
    "Sec-WebSocket-Key: " KEY "\r\n"
    "Sec-WebSocket-Version: 13\r\n"
    "\r\n";

/* Feeds the whole text in one call. */
static http_status_t feed_all(http_req_t *req, const char *text, size_t len, size_t *consumed)
{
    http_req_init(req);
    *consumed = (size_t)-1;
    return http_req_feed(req, text, len, consumed);
}

/* Parses text (one piece) and runs the upgrade check; returns its result. */
static int check_upgrade_text(const char *text, const char **why)
{
    http_req_t *req = malloc(sizeof(*req));
    size_t used;
    http_status_t st = feed_all(req, text, strlen(text), &used);
    *why = NULL;
    int rc;
    if (st != HTTP_DONE) {
        printf("    (request did not parse: status %d)\n", (int)st);
        rc = 99;
    } else {
        rc = http_req_check_upgrade(req, why);
    }
    free(req);
    return rc;
}

/* An upgrade request with the given header lines in place of the usual. */
static char *make_req(const char *method, const char *upgrade, const char *connection,
                      const char *key_lines, const char *version)
{
    char *s = malloc(2048);
    snprintf(s, 2048, "%s /ws HTTP/1.1\r\nHost: h\r\n%s%s%s%s\r\n", method, upgrade, connection,
             key_lines, version);
    return s;
}

#define UPG "Upgrade: websocket\r\n"
#define CONN "Connection: Upgrade\r\n"
#define KEYL "Sec-WebSocket-Key: " KEY "\r\n"
#define VER "Sec-WebSocket-Version: 13\r\n"

/* Expects check_upgrade of the request built from the parts to give want. */
static void expect_upgrade(const char *method, const char *upgrade, const char *connection,
                           const char *key_lines, const char *version, int want,
                           const char *file, int line)
{
    char *text = make_req(method, upgrade, connection, key_lines, version);
    const char *why = NULL;
    int rc = check_upgrade_text(text, &why);
    if (!unit_check_int(rc, want, file, line, "http_req_check_upgrade")) {
        printf("    request: ");
        for (const char *c = text; *c != '\0'; c++) {
            if (*c == '\r') {
                printf("\\r");
            } else if (*c == '\n') {
                printf("\\n");
            } else {
                putchar(*c);
            }
        }
        putchar('\n');
    }
    if (rc == -1) {
        unit_check(why != NULL && why[0] != '\0', file, line, "why is set");
    }
    free(text);
}
#define EXPECT_UPGRADE(m, u, c, k, v, want) expect_upgrade(m, u, c, k, v, want, __FILE__, __LINE__)

/* ------------------------------------------------------------- feeding */

TEST(feed_one_piece)
{
    http_req_t *req = malloc(sizeof(*req));
    size_t used;
    size_t n = strlen(upgrade_req);
    CHECK_EQ_INT(feed_all(req, upgrade_req, n, &used), HTTP_DONE);
    CHECK_EQ_INT(used, n);
    CHECK_EQ_INT(req->method, HTTP_GET);
    CHECK_STR_EQ(req->url, "/ws?user=alice&x=1");
    CHECK_STR_EQ(req->upgrade, "websocket");
    CHECK_STR_EQ(req->connection, "Upgrade");
    CHECK_STR_EQ(req->ws_key, KEY);
    CHECK_EQ_INT(req->ws_key_len, 24);
    CHECK_STR_EQ(req->ws_version, "13");
    CHECK_EQ_INT(req->dup_key, 0);

    const char *path, *query;
    http_req_split(req, &path, &query);
    CHECK_STR_EQ(path, "/ws");
    CHECK_STR_EQ(query, "user=alice&x=1");
    free(req);
}

TEST(feed_extra_bytes_after_headers)
{
    /* The client may send its first WebSocket frame right behind the
     * headers: those bytes are not the request's. */
    static const char frame[] = "\x81\x85\x01\x02\x03\x04hello";
    size_t n = strlen(upgrade_req);
    size_t total = n + sizeof(frame) - 1;
    char *buf = malloc(total);
    memcpy(buf, upgrade_req, n);
    memcpy(buf + n, frame, sizeof(frame) - 1);
    http_req_t *req = malloc(sizeof(*req));
    size_t used;
    CHECK_EQ_INT(feed_all(req, buf, total, &used), HTTP_DONE);
    CHECK_EQ_INT(used, n);

    /* Same with the request split in two: the second feed's count. */
    http_req_init(req);
    used = (size_t)-1;
    CHECK_EQ_INT(http_req_feed(req, buf, 10, &used), HTTP_AGAIN);
    CHECK_EQ_INT(http_req_feed(req, buf + 10, total - 10, &used), HTTP_DONE);
    CHECK_EQ_INT(used, n - 10);
    CHECK_STR_EQ(req->ws_key, KEY);
    free(req);
    free(buf);
}

TEST(feed_byte_by_byte)
{
    http_req_t *req = malloc(sizeof(*req));
    http_req_init(req);
    size_t n = strlen(upgrade_req);
    size_t i;
    http_status_t st = HTTP_AGAIN;
    size_t used = (size_t)-1;
    for (i = 0; i < n; i++) {
        st = http_req_feed(req, upgrade_req + i, 1, &used);
        if (st != HTTP_AGAIN) {
            break;
        }
    }
    CHECK_EQ_INT(st, HTTP_DONE);
    CHECK_EQ_INT(i, n - 1);         /* done on the very last byte */
    CHECK_EQ_INT(used, 1);
    CHECK_STR_EQ(req->url, "/ws?user=alice&x=1");
    CHECK_STR_EQ(req->upgrade, "websocket");
    CHECK_STR_EQ(req->connection, "Upgrade");
    CHECK_STR_EQ(req->ws_key, KEY);
    CHECK_STR_EQ(req->ws_version, "13");
    const char *why = NULL;
    CHECK_EQ_INT(http_req_check_upgrade(req, &why), 0);
    free(req);
}

TEST(feed_plain_get_is_done_too)
{
    http_req_t *req = malloc(sizeof(*req));
    size_t used;
    const char *t = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    CHECK_EQ_INT(feed_all(req, t, strlen(t), &used), HTTP_DONE);
    CHECK_EQ_INT(used, strlen(t));
    const char *path, *query;
    http_req_split(req, &path, &query);
    CHECK_STR_EQ(path, "/healthz");
    CHECK_STR_EQ(query, "");
    const char *why = NULL;
    CHECK_EQ_INT(http_req_check_upgrade(req, &why), -1);
    free(req);
}

TEST(feed_incomplete_is_again)
{
    http_req_t *req = malloc(sizeof(*req));
    size_t used;
    CHECK_EQ_INT(feed_all(req, upgrade_req, strlen(upgrade_req) - 2, &used), HTTP_AGAIN);
    CHECK_EQ_INT(feed_all(req, "GET", 3, &used), HTTP_AGAIN);
    free(req);
}

TEST(feed_malformed_is_bad)
{
    const char *bad[] = {
        "GARBAGE\r\n\r\n",
        "GET /ws HTTP/1.1\r\nHost localhost\r\n\r\n",       /* no colon */
        "GET /ws HTTX/1.1\r\n\r\n",
        "GET /ws HTTP/1.1 extra\r\n\r\n",
        "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",      /* a TLS ClientHello */
        "GET /ws HTTP/1.1\r\nContent-Length: abc\r\n\r\n",  /* not a number */
        "G\x01T /ws HTTP/1.1\r\n\r\n",                      /* not a method */
        "GET /ws HTTP/1.1\r\nX: a\x01" "b\r\n\r\n",          /* control char in a value */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        http_req_t *req = malloc(sizeof(*req));
        size_t used;
        if (!CHECK_EQ_INT(feed_all(req, bad[i], strlen(bad[i]), &used), HTTP_BAD)) {
            printf("    case %zu\n", i);
        }
        free(req);
    }
}

TEST(feed_long_kept_header_value_is_bad)
{
    /* Values of the kept headers are bounded (HTTP_MAX_VALUE). */
    char *t = malloc(1024);
    char pad[300];
    memset(pad, 'a', 299);
    pad[299] = '\0';
    snprintf(t, 1024, "GET /ws HTTP/1.1\r\nSec-WebSocket-Key: %s\r\n\r\n", pad);
    http_req_t *req = malloc(sizeof(*req));
    size_t used;
    CHECK_EQ_INT(feed_all(req, t, strlen(t), &used), HTTP_BAD);
    free(req);
    free(t);
}

/* A request whose header block is exactly total bytes long. */
static char *request_of_size(size_t total)
{
    const char *head = "GET /ws HTTP/1.1\r\nX-Pad: ";
    const char *tail = "\r\n\r\n";
    char *s = malloc(total + 1);
    size_t h = strlen(head), t = strlen(tail);
    memcpy(s, head, h);
    memset(s + h, 'p', total - h - t);
    memcpy(s + total - t, tail, t);
    s[total] = '\0';
    return s;
}

TEST(feed_header_block_limit)
{
    http_req_t *req = malloc(sizeof(*req));
    size_t used;

    char *exact = request_of_size(HTTP_MAX_HEADER_BYTES);
    CHECK_EQ_INT(feed_all(req, exact, HTTP_MAX_HEADER_BYTES, &used), HTTP_DONE);
    CHECK_EQ_INT(used, HTTP_MAX_HEADER_BYTES);

    char *over = request_of_size(HTTP_MAX_HEADER_BYTES + 1);
    CHECK_EQ_INT(feed_all(req, over, HTTP_MAX_HEADER_BYTES + 1, &used), HTTP_TOO_BIG);

    /* In chunks: the limit counts across feeds. */
    http_req_init(req);
    http_status_t st = HTTP_AGAIN;
    size_t off = 0;
    while (st == HTTP_AGAIN && off < HTTP_MAX_HEADER_BYTES + 1) {
        size_t n = HTTP_MAX_HEADER_BYTES + 1 - off < 1000 ? HTTP_MAX_HEADER_BYTES + 1 - off : 1000;
        st = http_req_feed(req, over + off, n, &used);
        off += n;
    }
    CHECK_EQ_INT(st, HTTP_TOO_BIG);

    /* A never-ending header block, much larger than the limit. */
    size_t big = 3 * HTTP_MAX_HEADER_BYTES;
    char *huge = request_of_size(big);
    CHECK_EQ_INT(feed_all(req, huge, big, &used), HTTP_TOO_BIG);

    /* The exact-size request in chunks still completes. */
    http_req_init(req);
    st = HTTP_AGAIN;
    off = 0;
    while (st == HTTP_AGAIN && off < HTTP_MAX_HEADER_BYTES) {
        size_t n = HTTP_MAX_HEADER_BYTES - off < 1000 ? HTTP_MAX_HEADER_BYTES - off : 1000;
        st = http_req_feed(req, exact + off, n, &used);
        off += n;
    }
    CHECK_EQ_INT(st, HTTP_DONE);

    free(exact);
    free(over);
    free(huge);
    free(req);
}

TEST(feed_long_url_is_rejected)
{
    size_t n = HTTP_MAX_URL + 100;
    char *t = malloc(n + 64);
    memcpy(t, "GET /", 5);
    memset(t + 5, 'u', n);
    strcpy(t + 5 + n, " HTTP/1.1\r\n\r\n");
    http_req_t *req = malloc(sizeof(*req));
    size_t used;
    http_status_t st = feed_all(req, t, strlen(t), &used);
    CHECK(st == HTTP_BAD || st == HTTP_TOO_BIG);
    free(req);
    free(t);
}

/* ------------------------------------------------------- upgrade checks */

TEST(upgrade_valid)
{
    const char *why = NULL;
    CHECK_EQ_INT(check_upgrade_text(upgrade_req, &why), 0);
    EXPECT_UPGRADE("GET", UPG, CONN, KEYL, VER, 0);
    /* Case-insensitive tokens and header names. */
    EXPECT_UPGRADE("GET", "upgrade: WebSocket\r\n", "CONNECTION: upgrade\r\n",
                   "sec-websocket-key: " KEY "\r\n", "SEC-WEBSOCKET-VERSION: 13\r\n", 0);
    /* Connection is a list (Firefox sends "keep-alive, Upgrade"). */
    EXPECT_UPGRADE("GET", UPG, "Connection: keep-alive, Upgrade\r\n", KEYL, VER, 0);
    EXPECT_UPGRADE("GET", UPG, "Connection: Upgrade , keep-alive\r\n", KEYL, VER, 0);
    /* Optional white space before a value is not part of it. */
    EXPECT_UPGRADE("GET", "Upgrade:websocket\r\n", "Connection:   Upgrade\t\r\n",
                   "Sec-WebSocket-Key:\t" KEY "\r\n", "Sec-WebSocket-Version:  13\r\n", 0);
    /* Repeated Connection headers combine into one list. */
    EXPECT_UPGRADE("GET", UPG, "Connection: keep-alive\r\nConnection: Upgrade\r\n", KEYL, VER, 0);
}

TEST(upgrade_rejects_method)
{
    EXPECT_UPGRADE("POST", UPG, CONN, KEYL, VER, -1);
    EXPECT_UPGRADE("PUT", UPG, CONN, KEYL, VER, -1);
    EXPECT_UPGRADE("HEAD", UPG, CONN, KEYL, VER, -1);
}

TEST(upgrade_rejects_upgrade_header)
{
    EXPECT_UPGRADE("GET", "", CONN, KEYL, VER, -1);
    EXPECT_UPGRADE("GET", "Upgrade: h2c\r\n", CONN, KEYL, VER, -1);
    EXPECT_UPGRADE("GET", "Upgrade: websockets\r\n", CONN, KEYL, VER, -1);
    EXPECT_UPGRADE("GET", "Upgrade: \r\n", CONN, KEYL, VER, -1);
}

TEST(upgrade_rejects_connection_header)
{
    EXPECT_UPGRADE("GET", UPG, "", KEYL, VER, -1);
    EXPECT_UPGRADE("GET", UPG, "Connection: keep-alive\r\n", KEYL, VER, -1);
    EXPECT_UPGRADE("GET", UPG, "Connection: close\r\n", KEYL, VER, -1);
    EXPECT_UPGRADE("GET", UPG, "Connection: upgraded\r\n", KEYL, VER, -1);
    EXPECT_UPGRADE("GET", UPG, "Connection: keep-alive-upgrade\r\n", KEYL, VER, -1);
}

TEST(upgrade_rejects_version)
{
    EXPECT_UPGRADE("GET", UPG, CONN, KEYL, "Sec-WebSocket-Version: 12\r\n", -1);
    EXPECT_UPGRADE("GET", UPG, CONN, KEYL, "Sec-WebSocket-Version: 8\r\n", -1);
    EXPECT_UPGRADE("GET", UPG, CONN, KEYL, "Sec-WebSocket-Version: 130\r\n", -1);
    EXPECT_UPGRADE("GET", UPG, CONN, KEYL, "", -1);
}

TEST(upgrade_rejects_key)
{
    EXPECT_UPGRADE("GET", UPG, CONN, "", VER, -1);                                    /* missing */
    EXPECT_UPGRADE("GET", UPG, CONN, "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=\r\n", VER, -1);   /* 23 */
    EXPECT_UPGRADE("GET", UPG, CONN, "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ===\r\n", VER, -1); /* 25 */
    EXPECT_UPGRADE("GET", UPG, CONN, "Sec-WebSocket-Key: c2hvcnQ=\r\n", VER, -1);
    EXPECT_UPGRADE("GET", UPG, CONN, "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ\r\n", VER, -1);     /* unpadded */
    EXPECT_UPGRADE("GET", UPG, CONN, "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25j!Q==\r\n", VER, -1);   /* '!' */
    EXPECT_UPGRADE("GET", UPG, CONN, "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25j ZQ==\r\n", VER, -1);  /* space */
    EXPECT_UPGRADE("GET", UPG, CONN, "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQQQ\r\n", VER, -1);   /* 18 bytes */
    /* Duplicated, even with the same value. */
    EXPECT_UPGRADE("GET", UPG, CONN, KEYL KEYL, VER, -1);
    EXPECT_UPGRADE("GET", UPG, CONN, KEYL "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n", VER, -1);
    /* Another valid 16-byte key is fine. */
    EXPECT_UPGRADE("GET", UPG, CONN, "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n", VER, 0);
}

/*
 * BUG (http_on_header_value / http_req_check_upgrade): llhttp 8 passes a
 * header value's trailing white space on, and http.c keeps it, so
 * "Sec-WebSocket-Version: 13 " is stored as "13 " and
 * "Sec-WebSocket-Key: <24 chars>  " as 26 bytes; both upgrades are
 * refused (400). RFC 9110 5.5: trailing OWS is not part of the value and
 * a recipient must exclude it. Expected: 0; actual: -1.
 */
TEST(regression_upgrade_trailing_whitespace_in_values)
{
    EXPECT_UPGRADE("GET", UPG, CONN, KEYL, "Sec-WebSocket-Version: 13 \r\n", 0);
    EXPECT_UPGRADE("GET", UPG, CONN, "Sec-WebSocket-Key: " KEY "\t\r\n", VER, 0);
    /* (list-valued headers are trimmed already) */
    EXPECT_UPGRADE("GET", "Upgrade: websocket  \r\n", "Connection: Upgrade \r\n", KEYL, VER, 0);
}

/*
 * BUG (http_req_check_upgrade): EVP_DecodeBlock() decodes '=' as zero bits
 * wherever it stands, so a 24-character key ending in "==" is accepted
 * whatever '=' it holds before: "dGhlIHNhbXBsZSBub25jZ===" (15 bytes of
 * base64 and an invalid quantum), "AAAA=AAAAAAAAAAAAAAAAA==" and even
 * "====================A===" pass. RFC 6455 4.2.1 wants base64 that
 * decodes to 16 bytes. Expected: -1; actual: 0.
 */
TEST(regression_upgrade_key_with_padding_inside)
{
    EXPECT_UPGRADE("GET", UPG, CONN, "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZ===\r\n", VER, -1);
    EXPECT_UPGRADE("GET", UPG, CONN, "Sec-WebSocket-Key: AAAA=AAAAAAAAAAAAAAAAA==\r\n", VER, -1);
    EXPECT_UPGRADE("GET", UPG, CONN, "Sec-WebSocket-Key: ====================A===\r\n", VER, -1);
}

/*
 * BUG (http_on_header_field_complete): a repeated Sec-WebSocket-Key is only
 * noticed when the earlier one had a non-empty value (dup_key is set only
 * if ws_key_len > 0). "Sec-WebSocket-Key:" (empty) followed by a valid key
 * is accepted although RFC 6455 11.3.1 says the header MUST NOT appear more
 * than once. Expected: -1 from http_req_check_upgrade; actual: 0.
 */
TEST(regression_upgrade_duplicate_key_after_empty_one)
{
    EXPECT_UPGRADE("GET", UPG, CONN, "Sec-WebSocket-Key: \r\n" KEYL, VER, -1);
}

/* -------------------------------------------------------------- queries */

TEST(query_present_and_absent)
{
    char out[64];
    CHECK_EQ_INT(http_query_get("user=alice&x=1", "user", out, sizeof(out)), 5);
    CHECK_STR_EQ(out, "alice");
    CHECK_EQ_INT(http_query_get("x=1&user=bob", "user", out, sizeof(out)), 3);
    CHECK_STR_EQ(out, "bob");
    CHECK_EQ_INT(http_query_get("x=1&token=a.b.c&y=2", "token", out, sizeof(out)), 5);
    CHECK_STR_EQ(out, "a.b.c");
    CHECK_EQ_INT(http_query_get("x=1&y=2", "user", out, sizeof(out)), -1);
    CHECK_EQ_INT(http_query_get("", "user", out, sizeof(out)), -1);
    CHECK_EQ_INT(http_query_get("user", "user", out, sizeof(out)), -1);      /* no '=' */
    CHECK_EQ_INT(http_query_get("&&user=z&&", "user", out, sizeof(out)), 1);
    CHECK_STR_EQ(out, "z");
    /* Empty value: present, length 0. */
    CHECK_EQ_INT(http_query_get("user=&x=1", "user", out, sizeof(out)), 0);
    CHECK_STR_EQ(out, "");
    /* The first occurrence wins. */
    CHECK_EQ_INT(http_query_get("user=a&user=b", "user", out, sizeof(out)), 1);
    CHECK_STR_EQ(out, "a");
    /* '=' in the value is data. */
    CHECK_EQ_INT(http_query_get("token=a=b", "token", out, sizeof(out)), 3);
    CHECK_STR_EQ(out, "a=b");
    /* Names are case-sensitive. */
    CHECK_EQ_INT(http_query_get("USER=a", "user", out, sizeof(out)), -1);
}

TEST(query_name_prefix_of_another)
{
    char out[64];
    CHECK_EQ_INT(http_query_get("username=mallory&user=al", "user", out, sizeof(out)), 2);
    CHECK_STR_EQ(out, "al");
    CHECK_EQ_INT(http_query_get("users=x", "user", out, sizeof(out)), -1);
    CHECK_EQ_INT(http_query_get("xuser=1", "user", out, sizeof(out)), -1);
    CHECK_EQ_INT(http_query_get("a=user=1", "user", out, sizeof(out)), -1);
    CHECK_EQ_INT(http_query_get("user=1", "username", out, sizeof(out)), -1);
}

TEST(query_percent_decoding)
{
    char out[64];
    CHECK_EQ_INT(http_query_get("u=%41%42c", "u", out, sizeof(out)), 3);
    CHECK_STR_EQ(out, "ABc");
    CHECK_EQ_INT(http_query_get("u=%4a%4A", "u", out, sizeof(out)), 2);
    CHECK_STR_EQ(out, "JJ");
    CHECK_EQ_INT(http_query_get("u=a+b+%2B", "u", out, sizeof(out)), 5);
    CHECK_STR_EQ(out, "a b +");
    CHECK_EQ_INT(http_query_get("u=%26%3D&v=1", "u", out, sizeof(out)), 2);
    CHECK_STR_EQ(out, "&=");
    CHECK_EQ_INT(http_query_get("u=%C3%A9", "u", out, sizeof(out)), 2);
    CHECK_STR_EQ(out, "\xC3\xA9");
}

TEST(query_bad_escapes)
{
    char out[64];
    CHECK_EQ_INT(http_query_get("u=%zz", "u", out, sizeof(out)), -2);
    CHECK_EQ_INT(http_query_get("u=%4", "u", out, sizeof(out)), -2);
    CHECK_EQ_INT(http_query_get("u=%", "u", out, sizeof(out)), -2);
    CHECK_EQ_INT(http_query_get("u=a%&v=1", "u", out, sizeof(out)), -2);
    CHECK_EQ_INT(http_query_get("u=%4&1", "u", out, sizeof(out)), -2);    /* '&' ends the value */
    CHECK_EQ_INT(http_query_get("u=%g0", "u", out, sizeof(out)), -2);
    /* An encoded NUL. */
    CHECK_EQ_INT(http_query_get("u=%00", "u", out, sizeof(out)), -2);
    CHECK_EQ_INT(http_query_get("u=ab%00cd", "u", out, sizeof(out)), -2);
    /* A bad escape in another parameter does not matter. */
    CHECK_EQ_INT(http_query_get("v=%zz&u=ok", "u", out, sizeof(out)), 2);
}

TEST(query_too_long)
{
    char out[4];
    CHECK_EQ_INT(http_query_get("u=abc", "u", out, sizeof(out)), 3);
    CHECK_STR_EQ(out, "abc");
    CHECK_EQ_INT(http_query_get("u=abcd", "u", out, sizeof(out)), -2);
    CHECK_EQ_INT(http_query_get("u=%41%41%41", "u", out, sizeof(out)), 3);
    CHECK_EQ_INT(http_query_get("u=%41%41%41%41", "u", out, sizeof(out)), -2);
}

/* ------------------------------------------------------------ responses */

TEST(ws_accept_rfc6455_example)
{
    char out[29];
    memset(out, 'x', sizeof(out));
    CHECK_EQ_INT(http_ws_accept("dGhlIHNhbXBsZSBub25jZQ==", out), 0);
    CHECK_STR_EQ(out, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    /* Another key gives another answer. */
    CHECK_EQ_INT(http_ws_accept("AAAAAAAAAAAAAAAAAAAAAA==", out), 0);
    CHECK(strcmp(out, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=") != 0);
    CHECK_EQ_INT(strlen(out), 28);
}

TEST(ws_accept_rejects_overlong_key)
{
    char key[HTTP_MAX_VALUE + 2];
    memset(key, 'k', sizeof(key) - 1);
    key[sizeof(key) - 1] = '\0';
    char out[29];
    CHECK_EQ_INT(http_ws_accept(key, out), -1);
}

TEST(response_head)
{
    char buf[512];
    int n = http_response_head(buf, sizeof(buf), 404, "text/plain", "X-A: b\r\n", 10);
    REQUIRE(n > 0);
    CHECK_EQ_INT(n, strlen(buf));
    CHECK(strncmp(buf, "HTTP/1.1 404 Not Found\r\n", 24) == 0);
    CHECK(strstr(buf, "\r\nContent-Type: text/plain\r\n") != NULL);
    CHECK(strstr(buf, "\r\nContent-Length: 10\r\n") != NULL);
    CHECK(strstr(buf, "\r\nConnection: close\r\n") != NULL);
    CHECK(strstr(buf, "\r\nX-A: b\r\n\r\n") != NULL);
    CHECK(strcmp(buf + n - 4, "\r\n\r\n") == 0);

    n = http_response_head(buf, sizeof(buf), 431, "text/plain", NULL, 0);
    REQUIRE(n > 0);
    CHECK(strncmp(buf, "HTTP/1.1 431 Request Header Fields Too Large\r\n", 46) == 0);
    CHECK(strcmp(buf + n - 4, "\r\n\r\n") == 0);

    CHECK_EQ_INT(http_response_head(buf, 20, 200, "text/plain", NULL, 0), -1);
}

/* Collects a request's body as http_req_body() hands it over. */
typedef struct {
    char data[256];
    size_t len;
    int calls;
} sink_t;

static int sink_body(void *ud, const char *data, size_t len)
{
    sink_t *s = ud;
    if (s->len + len > sizeof(s->data)) {
        return -1;
    }
    memcpy(s->data + s->len, data, len);
    s->len += len;
    s->calls++;
    return 0;
}

/* Feeds a POST's headers; the body bytes that came with them are in
 * text + *used. */
static http_req_t *post_req(const char *text, size_t *used, sink_t *sink)
{
    http_req_t *req = malloc(sizeof(*req));
    http_req_init(req);
    if (http_req_feed(req, text, strlen(text), used) != HTTP_DONE) {
        free(req);
        return NULL;
    }
    memset(sink, 0, sizeof(*sink));
    req->on_body = sink_body;
    req->body_ud = sink;
    return req;
}

TEST(body_content_length_stops_at_its_end)
{
    static const char text[] = "POST /files?room=r HTTP/1.1\r\nHost: h\r\nContent-Type: image/png\r\n"
                               "Content-Length: 10\r\nExpect: 100-continue\r\n\r\n0123456789GET / HTTP/1.1\r\n";
    size_t used;
    sink_t sink;
    http_req_t *req = post_req(text, &used, &sink);
    REQUIRE(req != NULL);
    CHECK(req->has_body);
    CHECK_EQ_INT(http_req_content_length(req), 10);
    CHECK(http_req_expects_continue(req));
    CHECK_STR_EQ(req->content_type, "image/png");
    CHECK_EQ_INT(sink.len, 0);          /* nothing before the reader asks */
    const char *rest = text + used;
    CHECK_EQ_INT(http_req_body(req, rest, 4), HTTP_AGAIN);
    CHECK_EQ_INT(http_req_body(req, rest + 4, strlen(rest) - 4), HTTP_DONE);
    CHECK_EQ_INT(sink.len, 10);
    CHECK(memcmp(sink.data, "0123456789", 10) == 0);
    /* Done is done: what follows is never parsed. */
    CHECK_EQ_INT(http_req_body(req, "xx", 2), HTTP_DONE);
    free(req);
}

TEST(body_chunked_and_empty)
{
    static const char chunked[] = "POST /files HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                                  "3\r\nab\0\r\n2;ext=1\r\nyz\r\n0\r\n\r\n";
    size_t used;
    sink_t sink;
    http_req_t *req = post_req(chunked, &used, &sink);
    REQUIRE(req != NULL);
    CHECK_EQ_INT(http_req_content_length(req), -1);
    CHECK_EQ_INT(http_req_body(req, chunked + used, sizeof(chunked) - 1 - used), HTTP_DONE);
    CHECK_EQ_INT(sink.len, 5);
    CHECK(memcmp(sink.data, "ab\0yz", 5) == 0);
    free(req);

    /* Content-Length: 0 completes without a byte. */
    static const char empty[] = "POST /files HTTP/1.1\r\nContent-Length: 0\r\n\r\n";
    req = post_req(empty, &used, &sink);
    REQUIRE(req != NULL);
    CHECK_EQ_INT(http_req_body(req, empty + used, 0), HTTP_DONE);
    CHECK_EQ_INT(sink.len, 0);
    free(req);

    /* A bad chunk size, and a reader that refuses: HTTP_BAD. */
    static const char bad[] = "POST /files HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n";
    req = post_req(bad, &used, &sink);
    REQUIRE(req != NULL);
    CHECK_EQ_INT(http_req_body(req, bad + used, strlen(bad + used)), HTTP_BAD);
    free(req);
    static const char big[] = "POST /files HTTP/1.1\r\nContent-Length: 300\r\n\r\n";
    req = post_req(big, &used, &sink);
    REQUIRE(req != NULL);
    char body[300];
    memset(body, 'x', sizeof(body));
    CHECK_EQ_INT(http_req_body(req, body, sizeof(body)), HTTP_BAD);    /* the sink holds 256 */
    free(req);
}

TEST(body_get_has_none)
{
    static const char text[] = "GET /files/abc HTTP/1.1\r\nRange: bytes=0-9\r\nContent-Length: 5\r\n\r\nhello";
    http_req_t *req = malloc(sizeof(*req));
    size_t used;
    CHECK_EQ_INT(feed_all(req, text, strlen(text), &used), HTTP_DONE);
    CHECK(!req->has_body);
    CHECK_STR_EQ(req->range, "bytes=0-9");
    CHECK_EQ_INT(http_req_content_length(req), -1);
    CHECK_EQ_INT(http_req_body(req, "hello", 5), HTTP_BAD);
    free(req);
}

int main(void)
{
    return unit_main();
}
