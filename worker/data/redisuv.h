/*
 * redisuv: hiredis' event hooks on a libuv loop. It replaces the adapter
 * that ships with hiredis 0.14, whose poll callback drops libuv's error
 * status: a connect refused by a Redis that is down then goes unnoticed
 * and the dial hangs forever. Here an error wakes hiredis up, so it reads
 * the socket's error and fails the connection at once.
 */
#ifndef CHATD_REDISUV_H
#define CHATD_REDISUV_H

#include <uv.h>
#include <hiredis/async.h>

/* Attaches ac to loop. Returns REDIS_OK or REDIS_ERR. */
int redisuv_attach(redisAsyncContext *ac, uv_loop_t *loop);

#endif
