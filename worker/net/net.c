#include "net.h"
#include "../../common/log.h"
#include "conn.h"
#include "ws.h"

#include <malloc.h>
#include <string.h>

void net_init(net_t *n, uv_loop_t *loop, const config_t *cfg, metrics_slot_t *metrics,
              const net_handlers_t *h, void *ud, size_t conn_size,
              const net_hooks_t *hooks, void *hooks_ud)
{
    memset(n, 0, offsetof(net_t, readbuf));
    n->loop = loop;
    n->cfg = cfg;
    n->metrics = metrics;
    n->h = h;
    n->ud = ud;
    n->hooks = hooks;
    n->hooks_ud = hooks_ud;
    /* Slots stay pointer-aligned whatever the upper layer's struct is. */
    if (conn_size < sizeof(conn_t)) {
        conn_size = sizeof(conn_t);
    }
    n->conn_size = (conn_size + 15) & ~(size_t)15;
    /* 64 per block: long-lived conns packed densely (pool.h). */
    pool_init(&n->conns_pool, n->conn_size, 64);
    if (cfg->deflate) {
        n->deflate_on = deflate_init(&n->deflate) == 0;
        if (!n->deflate_on) {
            log_error("event=deflate_unavailable err=\"zlib could not set up its streams\"");
        }
    }
}

int net_accept(net_t *n, uv_stream_t *listener, int tls)
{
    if (tls && n->tls == NULL) {
        return UV_EPROTO;
    }
    return conn_accept(n, listener, tls);
}

int net_tls_use(net_t *n, const tls_pem_t *pem, char *err, size_t errlen)
{
    if (n->tls != NULL) {
        return tls_swap(n->tls, pem, err, errlen);
    }
    n->tls = tls_new(pem, err, errlen);
    return n->tls != NULL ? 0 : -1;
}

void net_flush(net_t *n)
{
    /* All output made during this loop iteration leaves in one write per
     * connection, before the loop blocks again. */
    while (n->dirty != NULL) {
        conn_t *c = n->dirty;
        n->dirty = c->dirty_next;
        c->dirty = 0;
        c->dirty_next = NULL;
        conn_flush(c);
    }
}

void net_tick(net_t *n, uint64_t now_ms)
{
    conn_t *next;
    for (conn_t *c = n->conns; c != NULL; c = next) {
        next = c->next;
        conn_tick(c, now_ms);
    }
    if (n->deflate_on) {
        metrics_set(&n->metrics->deflate_in_bytes, n->deflate.bytes_in);
        metrics_set(&n->metrics->deflate_out_bytes, n->deflate.bytes_out);
    }
    /* Idle connections just gave their wslay state back; return those
     * pages to the kernel so that RSS follows the live set. */
    if (n->idle_released >= 64) {
        malloc_trim(0);
        n->idle_released = 0;
    }
}

int net_close_some(net_t *n, int max)
{
    /* A handshake under way completes first (or times out): cutting it
     * would look like a failed connection to the client. */
    int closed = 0;
    for (conn_t *c = n->conns; c != NULL && closed < max; c = c->next) {
        if (c->state == CONN_WS) {
            conn_close(c, 1001, "server going away");
            closed++;
        }
    }
    return closed;
}

void net_abort_all(net_t *n)
{
    for (conn_t *c = n->conns; c != NULL; c = c->next) {
        conn_abort(c);
    }
}

void net_free(net_t *n)
{
    pool_free(&n->conns_pool);
    conn_free_http_cache(n);
    iplimit_free(&n->per_ip);
    deflate_free(&n->deflate);
    buf_free(&n->inflated);
    tls_free(n->tls);
    n->tls = NULL;
}
