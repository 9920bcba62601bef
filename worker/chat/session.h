/*
 * session: the chat protocol spoken over one upgraded connection: the
 * welcome, request dispatch, the rate limit, and the rooms the connection
 * has joined. Embedded in its conn.
 */
#ifndef CHATD_SESSION_H
#define CHATD_SESSION_H

#include <stddef.h>
#include <stdint.h>

#include "auth.h"

typedef struct conn_s conn_t;
typedef struct member_s member_t;

typedef struct session_s {
    auth_t auth;
    char id[40];
    member_t *members;          /* memberships, linked through member_t.conn_next */
    int nrooms;
    double tokens;              /* rate-limit bucket */
    uint64_t refill_ms;
    uint64_t flood_start_ms;    /* start of the current one-second window */
    uint32_t flood_count;       /* rate-limited requests in that window */
} session_t;

/* Starts the session after the upgrade: takes ownership of *auth and
 * sends welcome. */
void session_start(conn_t *c, auth_t *auth);

/* Handles one complete, UTF-8-valid text message. */
void session_on_text(conn_t *c, const char *text, size_t len);

/* Sends an error frame answering request id (may be NULL). */
void session_send_error(conn_t *c, const char *id, int code, const char *message);

/* Sends a malloc'd JSON text and frees it; NULL (out of memory) is
 * answered with nothing. */
void session_send_json(conn_t *c, char *json);

/* Leaves every room and releases the session; idempotent. */
void session_end(conn_t *c);

#endif
