/*
 * inbox: delivery to a user rather than to a room. Every worker keeps the
 * sessions of each user it holds and subscribes to that user's channel
 * (store_user_channel) while it holds any; a frame published there
 * reaches every connection of the user on every worker and host. Read
 * receipts and direct-message notifications use it now; whatever else
 * addresses a person (keys, call signalling) goes the same way.
 */
#ifndef CHATD_INBOX_H
#define CHATD_INBOX_H

#include <stddef.h>

#include "chat.h"
#include "../data/store.h"
#include "session.h"

/* A session started / ended: joins or leaves its user's inbox here. */
void inbox_add(conn_t *c);
void inbox_remove(conn_t *c);

/*
 * Sends frame (JSON text) to every connection of user, on any worker or
 * host, except those that have joined skip_room (NULL: none) and the
 * session skip_session (its id, NULL: none). Fire and forget: a user with
 * no connection anywhere gets nothing.
 */
void inbox_send(chat_t *ch, const char *user, const char *skip_room, const char *skip_session,
                const char *frame);

/*
 * Sends frame to every connection of user, like inbox_send without skips,
 * and tells cb how many workers took it (an integer reply; 0: the user
 * has no connection anywhere; NULL or an error: Redis failed). Returns 0,
 * or -1 when nothing was sent (cb not called).
 */
int inbox_send_counted(chat_t *ch, const char *user, const char *frame, store_cb_t *cb, void *arg);

/* Bus events for user channels (others are ignored): a message, a
 * subscription confirmed or ended, the bus up or down. */
void inbox_on_bus_message(chat_t *ch, const char *channel, size_t clen, const char *msg, size_t len);
void inbox_on_bus_subscribed(chat_t *ch, const char *channel, size_t clen, int subscribed);
void inbox_on_bus_up(chat_t *ch);
void inbox_on_bus_down(chat_t *ch);

/* Once a second: retries subscriptions, lets go of users with no session. */
void inbox_tick(chat_t *ch);

/* Frees every inbox at worker exit. */
void inbox_free_all(chat_t *ch);

#endif
