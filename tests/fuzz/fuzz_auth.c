/*
 * fuzz_auth: who is connecting. The input is used three ways:
 *
 *  1. as the upgrade's query string, in development mode (secret NULL) and
 *     with the secret "fuzz-secret", exactly as conn_upgrade calls it;
 *  2. when it has a token=, that token's header and claims re-signed with
 *     the secret, so the claims checks are reached despite the signature;
 *  3. as the claims JSON of a token signed here with the secret.
 *
 * On every success auth_room_allowed runs on a few room names.
 */
#include "../../worker/net/auth.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#define CHECK(cond) do { \
        if (!(cond)) { \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
            abort(); \
        } \
    } while (0)

#define SECRET "fuzz-secret"
#define NOW INT64_C(1700000000)

/* base64url without padding of src into dst (room for 4*n/3+4). */
static size_t b64url(const uint8_t *src, size_t n, char *dst)
{
    static const char a[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t o = 0;
    size_t i = 0;
    for (; i + 2 < n; i += 3) {
        uint32_t v = (uint32_t)src[i] << 16 | (uint32_t)src[i + 1] << 8 | src[i + 2];
        dst[o++] = a[v >> 18 & 63];
        dst[o++] = a[v >> 12 & 63];
        dst[o++] = a[v >> 6 & 63];
        dst[o++] = a[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)src[i] << 16;
        dst[o++] = a[v >> 18 & 63];
        dst[o++] = a[v >> 12 & 63];
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)src[i] << 16 | (uint32_t)src[i + 1] << 8;
        dst[o++] = a[v >> 18 & 63];
        dst[o++] = a[v >> 12 & 63];
        dst[o++] = a[v >> 6 & 63];
    }
    dst[o] = '\0';
    return o;
}

/* Appends ".<HS256 signature of signing_input>" to signing_input in place
 * (it has room for 44 more bytes). */
static void sign(char *signing_input, size_t len)
{
    uint8_t mac[EVP_MAX_MD_SIZE];
    unsigned int maclen = 0;
    HMAC(EVP_sha256(), SECRET, (int)strlen(SECRET), (const uint8_t *)signing_input, len,
         mac, &maclen);
    signing_input[len] = '.';
    b64url(mac, maclen, signing_input + len + 1);
}

static const char *const rooms[] = {
    "general", "team:eng", "team:", "team", "a", "*", "x.y-z_1", "", "dm:alice:bob",
};

/* FUZZ_DEBUG=1 prints every call (for running single inputs). */
static int debug;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    const char *s = getenv("FUZZ_DEBUG");
    debug = s != NULL && strcmp(s, "1") == 0;
    return 0;
}

static void check_one(const char *query, const char *secret)
{
    auth_t a;
    const char *why = NULL;
    int rc = auth_check(query, secret, NOW, &a, &why);
    if (debug) {
        fprintf(stderr, "auth_check(\"%s\", %s) = %d %s user=%s rooms=%s\n", query,
                secret != NULL ? secret : "NULL", rc, rc == 0 ? "" : why, a.user,
                a.rooms != NULL ? a.rooms : "(all)");
    }
    if (rc == 0) {
        size_t n = strlen(a.user);
        CHECK(n >= 1 && n <= AUTH_USER_MAX);
        for (size_t i = 0; i < sizeof(rooms) / sizeof(rooms[0]); i++) {
            int ok = auth_room_allowed(&a, rooms[i]);
            CHECK(ok == 0 || ok == 1);
            if (a.rooms == NULL) {
                CHECK(ok == 1);
            }
        }
        /* Every pattern allows the room it names (minus a trailing '*',
         * plus a suffix), and the user's own name is a room name too. */
        if (a.rooms != NULL) {
            for (const char *p = a.rooms; *p != '\0'; p += strlen(p) + 1) {
                size_t pl = strlen(p);
                char *room = malloc(pl + 2);
                CHECK(room != NULL);
                memcpy(room, p, pl + 1);
                if (room[pl - 1] == '*') {
                    memcpy(room + pl - 1, "xy", 3);
                }
                CHECK(auth_room_allowed(&a, room) == 1);
                free(room);
            }
        }
        auth_room_allowed(&a, a.user);
    } else {
        CHECK(rc == -1 && why != NULL);
        CHECK(a.rooms == NULL);
    }
    auth_free(&a);
    CHECK(a.rooms == NULL);
}

/* Mode 2: the query with its token's signature replaced by a valid one. */
static void resign_query(const char *query, size_t len)
{
    const char *t = strstr(query, "token=");
    if (t == NULL) {
        return;
    }
    t += 6;
    const char *end = strchr(t, '&');
    size_t tlen = end != NULL ? (size_t)(end - t) : strlen(t);
    const char *dot = memrchr(t, '.', tlen);
    if (dot == NULL) {
        return;
    }
    size_t keep = (size_t)(dot - t);
    char *q = malloc(6 + keep + 1 + 44 + 1);
    if (q == NULL) {
        return;
    }
    memcpy(q, "token=", 6);
    memcpy(q + 6, t, keep);
    q[6 + keep] = '\0';
    sign(q + 6, keep);
    check_one(q, SECRET);
    free(q);
    (void)len;
}

/* Mode 3: the input as the claims of an HS256 token. */
static void signed_claims(const uint8_t *data, size_t size)
{
    static const char header[] = "{\"alg\":\"HS256\",\"typ\":\"JWT\"}";
    size_t cap = 6 + (sizeof(header) / 3 + 1) * 4 + 1 + (size / 3 + 1) * 4 + 1 + 44 + 1;
    char *q = malloc(cap);
    if (q == NULL) {
        return;
    }
    memcpy(q, "token=", 6);
    size_t n = 6;
    n += b64url((const uint8_t *)header, sizeof(header) - 1, q + n);
    q[n++] = '.';
    n += b64url(data, size, q + n);
    sign(q + 6, n - 6);
    check_one(q, SECRET);
    free(q);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* The query is at most a URL long (http.c's HTTP_MAX_URL). */
    if (size > 4096) {
        return 0;
    }
    char *query = malloc(size + 1);
    if (query == NULL) {
        return 0;
    }
    memcpy(query, data, size);
    query[size] = '\0';

    check_one(query, NULL);
    check_one(query, "");
    check_one(query, SECRET);
    resign_query(query, size);
    signed_claims(data, size);

    free(query);
    return 0;
}
