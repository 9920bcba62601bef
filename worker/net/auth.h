/*
 * auth: who is connecting. In development mode (no secret) the query's
 * user= names the user; otherwise token= must be an HS256 JWT signed with
 * the secret (verified by libjwt), whose sub is the user, whose exp is
 * honoured and whose optional rooms claim limits the rooms the user joins.
 */
#ifndef CHATD_AUTH_H
#define CHATD_AUTH_H

#include <stddef.h>
#include <stdint.h>

#define AUTH_TOKEN_MAX 4096
#define AUTH_USER_MAX 64

typedef struct auth_s {
    char user[AUTH_USER_MAX + 1];
    /* The rooms claim as NUL-terminated patterns back to back, ending in
     * an empty string; NULL when the token has no claim (all rooms). */
    char *rooms;
    int admin;                  /* the token's claim "admin": true (may delete any message) */
} auth_t;

/*
 * Authenticates the upgrade request's query string. secret is NULL or ""
 * in development mode; now is seconds since the epoch. On success returns
 * 0 and fills *out (release with auth_free()); otherwise returns -1 with a
 * short reason in *why and nothing to free.
 */
int auth_check(const char *query, const char *secret, int64_t now, auth_t *out,
               const char **why);

/*
 * As auth_check(), but an Authorization header ("Bearer <token>"), when
 * the request has one (authorization not NULL or ""), gives the token
 * instead of the query.
 */
int auth_check_request(const char *query, const char *authorization, const char *secret,
                       int64_t now, auth_t *out, const char **why);

void auth_free(auth_t *a);

/* 1 when the identity may join room: no claim, an exact name, or a
 * pattern ending in '*' that prefixes it. */
int auth_room_allowed(const auth_t *a, const char *room);

#endif
