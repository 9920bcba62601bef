#include "redisuv.h"

#include <stdlib.h>
#include <sys/ioctl.h>

/* How many times one wakeup reads (hiredis reads 16 KiB at a time): a
 * burst of pub/sub messages is taken in large batches, so each client
 * gets more frames per writev, yet one busy connection cannot starve the
 * loop. */
#define REDISUV_READS_PER_WAKEUP 32

typedef struct {
    redisAsyncContext *context;     /* NULL once hiredis has cleaned up */
    uv_poll_t handle;
    int events;
} redisuv_t;

static void redisuv_on_poll(uv_poll_t *handle, int status, int events)
{
    redisuv_t *p = handle->data;
    if (status < 0) {
        /* The socket failed (e.g. ECONNREFUSED): let hiredis find out. */
        events = p->events;
    }
    if (p->context != NULL && (events & UV_WRITABLE)) {
        redisAsyncHandleWrite(p->context);
    }
    for (int i = 0; i < REDISUV_READS_PER_WAKEUP && p->context != NULL && (events & UV_READABLE); i++) {
        redisAsyncHandleRead(p->context);
        /* Read again only while the kernel holds more; the context may
         * have gone during the callbacks the read ran. */
        int avail = 0;
        if (p->context == NULL || ioctl(p->context->c.fd, FIONREAD, &avail) == -1 || avail <= 0) {
            break;
        }
    }
}

static void redisuv_update(redisuv_t *p)
{
    if (p->events != 0) {
        uv_poll_start(&p->handle, p->events, redisuv_on_poll);
    } else {
        uv_poll_stop(&p->handle);
    }
}

static void redisuv_add_read(void *privdata)
{
    redisuv_t *p = privdata;
    p->events |= UV_READABLE;
    redisuv_update(p);
}

static void redisuv_del_read(void *privdata)
{
    redisuv_t *p = privdata;
    p->events &= ~UV_READABLE;
    redisuv_update(p);
}

static void redisuv_add_write(void *privdata)
{
    redisuv_t *p = privdata;
    p->events |= UV_WRITABLE;
    redisuv_update(p);
}

static void redisuv_del_write(void *privdata)
{
    redisuv_t *p = privdata;
    p->events &= ~UV_WRITABLE;
    redisuv_update(p);
}

static void redisuv_on_close(uv_handle_t *handle)
{
    free(handle->data);
}

static void redisuv_cleanup(void *privdata)
{
    redisuv_t *p = privdata;
    p->context = NULL;
    uv_close((uv_handle_t *)&p->handle, redisuv_on_close);
}

int redisuv_attach(redisAsyncContext *ac, uv_loop_t *loop)
{
    if (ac->ev.data != NULL) {
        return REDIS_ERR;
    }
    redisuv_t *p = calloc(1, sizeof(*p));
    if (p == NULL) {
        return REDIS_ERR;
    }
    if (uv_poll_init(loop, &p->handle, ac->c.fd) != 0) {
        free(p);
        return REDIS_ERR;
    }
    p->handle.data = p;
    p->context = ac;
    ac->ev.addRead = redisuv_add_read;
    ac->ev.delRead = redisuv_del_read;
    ac->ev.addWrite = redisuv_add_write;
    ac->ev.delWrite = redisuv_del_write;
    ac->ev.cleanup = redisuv_cleanup;
    ac->ev.data = p;
    return REDIS_OK;
}
