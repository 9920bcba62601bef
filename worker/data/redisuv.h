/*
 * redisuv: hiredis' event hooks on a libuv loop. It replaces the adapter
 * that ships with hiredis 0.14, whose poll callback drops libuv's error
 * status: a connect refused by a Redis that is down then goes unnoticed
 * and the dial hangs forever. Here an error wakes hiredis up, so it reads
 * the socket's error and fails the connection at once.
 *
 * It also coalesces writes under load: when the link wrote less than
 * coalesce_ms ago, what was queued since waits for the rest of that time
 * and leaves in one write. Redis then runs many commands per wakeup, and
 * its cost per command (the wakeup, the AOF write and fsync, a reply write,
 * a write to each subscriber) is shared. A link that has been quiet writes
 * at once, so a lone command waits for nothing.
 */
#ifndef CHATD_REDISUV_H
#define CHATD_REDISUV_H

#include <uv.h>
#include <hiredis/async.h>

/* Attaches ac to loop; coalesce_ms 0 writes every loop iteration. Returns
 * REDIS_OK or REDIS_ERR. */
int redisuv_attach(redisAsyncContext *ac, uv_loop_t *loop, int coalesce_ms);

#endif
