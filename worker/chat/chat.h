/*
 * chat: the protocol wing of a worker, and its door. It speaks the chat
 * contract over the connections the net wing upgrades (sessions, request
 * dispatch, the rate limit) and keeps the worker's rooms: membership,
 * in-order delivery and replay, messages, history, presence and typing.
 *
 * It registers two handler tables: one with the net wing (a connection
 * opened, a text arrived, a session closed) and one with the data wing
 * (a channel message, subscriptions, Redis up or down). worker.c wires
 * them; calls from here go down to net, data, proto and common by name.
 */
#ifndef CHATD_CHAT_H
#define CHATD_CHAT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <uv.h>

#include "../../common/config.h"
#include "../../common/metrics.h"
#include "../../common/pool.h"
#include "../data/archive.h"
#include "../data/bus.h"
#include "../net/net.h"

typedef struct room_s room_t;
typedef struct inbox_s inbox_t;

typedef struct chat_s {
    uv_loop_t *loop;
    const config_t *cfg;
    metrics_slot_t *metrics;    /* this worker's slot of the shared page */
    pid_t master_pid;           /* part of every session id, with pid */
    pid_t pid;
    bus_t *bus;
    archive_t *archive;         /* NULL without --mongo-uri */
    room_t **rooms;             /* hash table of rooms with local members */
    size_t rooms_cap;
    size_t nrooms;
    inbox_t **inboxes;          /* hash table of users with local sessions */
    size_t inboxes_cap;
    size_t ninboxes;
    uint64_t next_serial;       /* sessions and memberships */
    pool_t members_pool;        /* memberships (pool.h: dense, recycled) */
} chat_t;

/* Prepares ch; bus and archive (may be NULL) stay the caller's. */
void chat_init(chat_t *ch, uv_loop_t *loop, const config_t *cfg, metrics_slot_t *metrics,
               pid_t master_pid, bus_t *bus, archive_t *archive);

/* The handlers to give the net wing (with ch as their argument), and the
 * per-connection size they need: a session with its conn first. */
const net_handlers_t *chat_net_handlers(void);
size_t chat_conn_size(void);

/* The handlers to give the data wing's bus (with ch as their argument). */
const bus_handlers_t *chat_bus_handlers(void);

/* Once a second: rooms left empty are unsubscribed and freed. */
void chat_tick(chat_t *ch);

/* Frees every room; after the loop has run out. */
void chat_free(chat_t *ch);

#endif
