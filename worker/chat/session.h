/*
 * session: the chat protocol spoken over one upgraded connection: the
 * welcome, request dispatch, the rate limit, and the rooms the connection
 * has joined. The net wing allocates it, with its conn first.
 */
#ifndef CHATD_SESSION_H
#define CHATD_SESSION_H

#include <stddef.h>
#include <stdint.h>

#include "../net/auth.h"
#include "../net/conn.h"
#include "../net/net.h"
#include "chat.h"

typedef struct member_s member_t;

typedef struct session_s {
    conn_t conn;                /* first: net's allocation is the session's */
    auth_t auth;
    uint64_t serial;            /* makes the session id; 0 once ended */
    member_t *members;          /* memberships, linked through member_t.conn_next */
    int nrooms;
    double tokens;              /* rate-limit bucket */
    uint32_t refill_ms;         /* loop clock cut to 32 bits: differences only */
    uint32_t flood_start_ms;    /* start of the current one-second window */
    uint32_t flood_count;       /* rate-limited requests in that window */
    float relay_tokens;         /* signals and key requests: their own bucket */
    uint32_t relay_refill_ms;
    inbox_t *inbox;             /* its user's, on this worker (inbox.h) */
    struct session_s *inbox_next;
} session_t;

/* The session of an upgraded conn, and the chat wing that owns it. */
static inline session_t *session_of(conn_t *c)
{
    return (session_t *)((char *)c - offsetof(session_t, conn));
}

static inline chat_t *chat_of(const conn_t *c)
{
    return c->net->ud;
}

/* Writes the session's id ("<master pid>-<pid>-<serial>" in hex, unique
 * across workers and respawns) into out. */
void session_id(const session_t *s, char *out, size_t len);

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
