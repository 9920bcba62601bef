#include "auth.h"
#include "http.h"
#include "../../proto/proto.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <cjson/cJSON.h>
#include <jwt.h>

void auth_free(auth_t *a)
{
    free(a->rooms);
    a->rooms = NULL;
}

/* A sub becomes a display name: printable, valid UTF-8, at most 64 bytes. */
static int auth_sub_valid(const char *sub)
{
    size_t n = strlen(sub);
    if (n == 0 || n > AUTH_USER_MAX || !proto_utf8_valid((const uint8_t *)sub, n)) {
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)sub[i];
        if (c < 0x20 || c == 0x7f) {
            return 0;
        }
    }
    return 1;
}

/* Copies the rooms claim (a JSON array of strings) into a->rooms. */
static int auth_take_rooms(jwt_t *jwt, auth_t *a, const char **why)
{
    errno = 0;
    char *json = jwt_get_grants_json(jwt, "rooms");
    if (json == NULL) {
        return 0;       /* no claim: every room */
    }
    int rc = -1;
    cJSON *arr = cJSON_Parse(json);
    *why = "the rooms claim must be an array of strings";
    if (!cJSON_IsArray(arr)) {
        goto done;
    }
    size_t total = 1;
    const cJSON *it;
    cJSON_ArrayForEach(it, arr) {
        if (!cJSON_IsString(it)) {
            goto done;
        }
        total += strlen(it->valuestring) + 1;
    }
    a->rooms = malloc(total);
    if (a->rooms == NULL) {
        *why = "out of memory";
        goto done;
    }
    char *p = a->rooms;
    cJSON_ArrayForEach(it, arr) {
        size_t n = strlen(it->valuestring);
        /* An empty pattern would end the list early; it allows nothing. */
        if (n == 0) {
            continue;
        }
        memcpy(p, it->valuestring, n + 1);
        p += n + 1;
    }
    *p = '\0';
    rc = 0;
done:
    cJSON_Delete(arr);
    free(json);
    return rc;
}

static int auth_jwt(const char *token, const char *secret, int64_t now, auth_t *out,
                    const char **why)
{
    jwt_t *jwt = NULL;
    int rc = -1;
    if (jwt_decode(&jwt, token, (const unsigned char *)secret, (int)strlen(secret)) != 0) {
        *why = "invalid token";
        return -1;
    }
    /* Verification must not depend on what the token says of itself:
     * only HS256 is accepted, whatever libjwt would allow. */
    if (jwt_get_alg(jwt) != JWT_ALG_HS256) {
        *why = "token must be signed with HS256";
        goto done;
    }
    /* exp is a NumericDate, which may have a fraction (RFC 7519 2):
     * read it as JSON text rather than through libjwt's integer getter. */
    char *exp_json = jwt_get_grants_json(jwt, "exp");
    if (exp_json != NULL) {
        char *end;
        double exp = strtod(exp_json, &end);
        int number = end != exp_json && *end == '\0';
        free(exp_json);
        if (!number) {
            *why = "exp must be a number";
            goto done;
        }
        if (exp <= (double)now) {
            *why = "token expired";
            goto done;
        }
    }
    const char *sub = jwt_get_grant(jwt, "sub");
    if (sub == NULL || !auth_sub_valid(sub)) {
        *why = "token needs a sub of 1 to 64 printable characters";
        goto done;
    }
    memcpy(out->user, sub, strlen(sub) + 1);
    if (auth_take_rooms(jwt, out, why) != 0) {
        goto done;
    }
    /* Only the JSON literal true makes an admin: not "true", not 1. */
    char *admin = jwt_get_grants_json(jwt, "admin");
    out->admin = admin != NULL && strcmp(admin, "true") == 0;
    free(admin);
    rc = 0;
done:
    jwt_free(jwt);
    return rc;
}

int auth_check(const char *query, const char *secret, int64_t now, auth_t *out,
               const char **why)
{
    memset(out, 0, sizeof(*out));
    if (secret != NULL && secret[0] != '\0') {
        char *token = malloc(AUTH_TOKEN_MAX + 1);
        if (token == NULL) {
            *why = "out of memory";
            return -1;
        }
        int n = http_query_get(query, "token", token, AUTH_TOKEN_MAX + 1);
        int rc;
        if (n == -1) {
            *why = "missing token";
            rc = -1;
        } else if (n < 0) {
            *why = "malformed or over-long token";
            rc = -1;
        } else {
            rc = auth_jwt(token, secret, now, out, why);
        }
        free(token);
        return rc;
    }
    char user[AUTH_USER_MAX + 2];
    int n = http_query_get(query, "user", user, sizeof(user));
    if (n == -1) {
        *why = "missing user (development mode) or token";
        return -1;
    }
    if (n < 0 || !proto_user_valid(user, (size_t)n)) {
        *why = "user must match [A-Za-z0-9_.-]{1,64}";
        return -1;
    }
    memcpy(out->user, user, (size_t)n + 1);
    return 0;
}

int auth_check_request(const char *query, const char *authorization, const char *secret,
                       int64_t now, auth_t *out, const char **why)
{
    if (authorization == NULL || authorization[0] == '\0') {
        return auth_check(query, secret, now, out, why);
    }
    memset(out, 0, sizeof(*out));
    /* The scheme is case-insensitive (RFC 9110 11.1); one space or more
     * before the credentials. */
    if (strncasecmp(authorization, "Bearer ", 7) != 0) {
        *why = "Authorization must be 'Bearer <token>'";
        return -1;
    }
    const char *token = authorization + 7;
    while (*token == ' ') {
        token++;
    }
    if (secret == NULL || secret[0] == '\0') {
        *why = "no tokens in development mode: give ?user=";
        return -1;
    }
    if (token[0] == '\0' || strlen(token) > AUTH_TOKEN_MAX) {
        *why = "malformed or over-long token";
        return -1;
    }
    return auth_jwt(token, secret, now, out, why);
}

int auth_room_allowed(const auth_t *a, const char *room)
{
    if (a->rooms == NULL) {
        return 1;
    }
    size_t rlen = strlen(room);
    for (const char *p = a->rooms; *p != '\0'; p += strlen(p) + 1) {
        size_t n = strlen(p);
        if (p[n - 1] == '*') {
            if (rlen >= n - 1 && strncmp(room, p, n - 1) == 0) {
                return 1;
            }
        } else if (strcmp(room, p) == 0) {
            return 1;
        }
    }
    return 0;
}
