#include "chat.h"
#include "inbox.h"
#include "presence.h"
#include "room.h"
#include "session.h"

#include <string.h>
#include <unistd.h>

void chat_init(chat_t *ch, uv_loop_t *loop, const config_t *cfg, metrics_slot_t *metrics,
               pid_t master_pid, bus_t *bus, archive_t *archive)
{
    memset(ch, 0, sizeof(*ch));
    ch->loop = loop;
    ch->cfg = cfg;
    ch->metrics = metrics;
    ch->master_pid = master_pid;
    ch->pid = getpid();
    ch->bus = bus;
    ch->archive = archive;
    pool_init(&ch->members_pool, sizeof(member_t), 128);
}

/* ---- what the net wing reports ---- */

static void chat_on_opened(void *ud, conn_t *c, auth_t *auth)
{
    (void)ud;
    session_start(c, auth);
}

static void chat_on_text(void *ud, conn_t *c, const char *text, size_t len)
{
    (void)ud;
    session_on_text(c, text, len);
}

static void chat_on_closed(void *ud, conn_t *c)
{
    (void)ud;
    session_end(c);
}

const net_handlers_t *chat_net_handlers(void)
{
    static const net_handlers_t h = {
        .opened = chat_on_opened,
        .text = chat_on_text,
        .closed = chat_on_closed,
    };
    return &h;
}

size_t chat_conn_size(void)
{
    return sizeof(session_t);
}

/* ---- what the data wing reports ---- */

/* Room channels are "chatd:{R}", user channels "chatd:u:{U}": each side
 * ignores the other's. */
static void chat_on_message(void *ud, const char *channel, size_t clen, const char *msg, size_t len)
{
    room_on_bus_message(ud, channel, clen, msg, len);
    inbox_on_bus_message(ud, channel, clen, msg, len);
}

static void chat_on_subscribed(void *ud, const char *channel, size_t clen, int subscribed)
{
    room_on_bus_subscribed(ud, channel, clen, subscribed);
    inbox_on_bus_subscribed(ud, channel, clen, subscribed);
}

static void chat_on_sub_up(void *ud)
{
    room_on_bus_up(ud);
    inbox_on_bus_up(ud);
}

static void chat_on_sub_down(void *ud)
{
    room_on_bus_down(ud);
    inbox_on_bus_down(ud);
}

static void chat_on_cmd_up(void *ud)
{
    presence_reassert(ud);
}

const bus_handlers_t *chat_bus_handlers(void)
{
    static const bus_handlers_t h = {
        .message = chat_on_message,
        .subscribed = chat_on_subscribed,
        .sub_up = chat_on_sub_up,
        .sub_down = chat_on_sub_down,
        .cmd_up = chat_on_cmd_up,
    };
    return &h;
}

void chat_tick(chat_t *ch)
{
    room_tick(ch);
    inbox_tick(ch);
    metrics_set(&ch->metrics->rooms, ch->nrooms);
}

void chat_free(chat_t *ch)
{
    room_free_all(ch);
    inbox_free_all(ch);
}
