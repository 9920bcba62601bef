#include "metrics.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>

/* Upper bounds of the latency histogram, in microseconds. */
static const uint64_t metrics_bounds_us[METRICS_LAT_BUCKETS] = {
    100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, 500000,
    1000000, 2500000
};

metrics_t *metrics_create(void)
{
    void *p = mmap(NULL, sizeof(metrics_t), PROT_READ | PROT_WRITE,
                   MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

void metrics_add(uint64_t *counter, uint64_t n)
{
    __atomic_fetch_add(counter, n, __ATOMIC_RELAXED);
}

void metrics_set(uint64_t *gauge, uint64_t v)
{
    __atomic_store_n(gauge, v, __ATOMIC_RELAXED);
}

uint64_t metrics_get(const uint64_t *counter)
{
    return __atomic_load_n(counter, __ATOMIC_RELAXED);
}

void metrics_count_error(metrics_slot_t *s, int code)
{
    if (code >= 0 && code < METRICS_ERRORS) {
        metrics_add(&s->errors[code], 1);
    }
}

void metrics_observe_latency(metrics_slot_t *s, uint64_t us)
{
    for (int i = 0; i < METRICS_LAT_BUCKETS; i++) {
        if (us <= metrics_bounds_us[i]) {
            metrics_add(&s->latency_buckets[i], 1);
            break;
        }
    }
    metrics_add(&s->latency_count, 1);
    metrics_add(&s->latency_sum_us, us);
}

static int metrics_printf(buf_t *out, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static int metrics_printf(buf_t *out, const char *fmt, ...)
{
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof(line)) {
        return -1;
    }
    return buf_append(out, line, (size_t)n);
}

/* The sum over all slots of the counter at offset off of a slot. */
static uint64_t metrics_sum(const metrics_t *m, size_t off)
{
    uint64_t t = 0;
    for (int i = 0; i < METRICS_SLOTS; i++) {
        t += metrics_get((const uint64_t *)((const char *)&m->slot[i] + off));
    }
    return t;
}

#define SUM(field) metrics_sum(m, offsetof(metrics_slot_t, field))

/* Per Redis node, summed over the workers: "serving" counts the workers
 * that use the node as a master, "up" those whose links to it are up. */
static int metrics_render_nodes(const metrics_t *m, buf_t *out)
{
    static const struct {
        const char *name;
        const char *type;
        size_t off;
    } series[] = {
        { "chatd_redis_node_serving", "gauge", offsetof(metrics_node_t, serving) },
        { "chatd_redis_node_up", "gauge", offsetof(metrics_node_t, up) },
        { "chatd_redis_node_commands_total", "counter", offsetof(metrics_node_t, commands) },
        { "chatd_redis_node_errors_total", "counter", offsetof(metrics_node_t, errors) },
        { "chatd_redis_node_reconnects_total", "counter", offsetof(metrics_node_t, reconnects) },
        { "chatd_redis_node_redirects_total", "counter", offsetof(metrics_node_t, redirects) },
    };
    enum { MAX_ADDRS = 2 * METRICS_REDIS_NODES };
    char addrs[MAX_ADDRS][sizeof(((metrics_node_t *)0)->addr)];
    int naddrs = 0;
    for (int i = 0; i < METRICS_SLOTS; i++) {
        if (__atomic_load_n(&m->slot[i].pid, __ATOMIC_RELAXED) == 0) {
            continue;
        }
        for (int k = 0; k < METRICS_REDIS_NODES; k++) {
            char a[sizeof(addrs[0])];
            memcpy(a, m->slot[i].redis_nodes[k].addr, sizeof(a));
            a[sizeof(a) - 1] = '\0';
            if (a[0] == '\0') {
                continue;
            }
            int seen = 0;
            for (int j = 0; j < naddrs && !seen; j++) {
                seen = strcmp(addrs[j], a) == 0;
            }
            if (!seen && naddrs < MAX_ADDRS) {
                memcpy(addrs[naddrs++], a, sizeof(a));
            }
        }
    }
    int rc = 0;
    for (size_t s = 0; s < sizeof(series) / sizeof(series[0]); s++) {
        rc |= metrics_printf(out, "# TYPE %s %s\n", series[s].name, series[s].type);
        for (int j = 0; j < naddrs; j++) {
            uint64_t total = 0;
            for (int i = 0; i < METRICS_SLOTS; i++) {
                if (__atomic_load_n(&m->slot[i].pid, __ATOMIC_RELAXED) == 0) {
                    continue;
                }
                for (int k = 0; k < METRICS_REDIS_NODES; k++) {
                    const metrics_node_t *nd = &m->slot[i].redis_nodes[k];
                    if (strncmp(nd->addr, addrs[j], sizeof(nd->addr)) == 0) {
                        total += metrics_get((const uint64_t *)((const char *)nd + series[s].off));
                    }
                }
            }
            rc |= metrics_printf(out, "%s{node=\"%s\"} %" PRIu64 "\n", series[s].name, addrs[j], total);
        }
    }
    return rc;
}

int metrics_render(const metrics_t *m, const char *const *error_names, size_t nerrors, buf_t *out)
{
    int rc = 0;
    rc |= metrics_printf(out, "# HELP chatd_workers Worker processes running.\n"
                              "# TYPE chatd_workers gauge\nchatd_workers %d\n",
                         __atomic_load_n(&m->workers, __ATOMIC_RELAXED));
    rc |= metrics_printf(out, "# HELP chatd_connections Open WebSocket sessions.\n"
                              "# TYPE chatd_connections gauge\nchatd_connections %" PRIu64 "\n",
                         SUM(connections));
    for (int i = 0; i < METRICS_SLOTS; i++) {
        int32_t pid = __atomic_load_n(&m->slot[i].pid, __ATOMIC_RELAXED);
        if (pid != 0) {
            rc |= metrics_printf(out, "chatd_worker_connections{worker=\"%d\",pid=\"%d\"} %" PRIu64 "\n",
                                 i, pid, metrics_get(&m->slot[i].connections));
        }
    }
    rc |= metrics_printf(out, "# TYPE chatd_upgrades_total counter\nchatd_upgrades_total %" PRIu64 "\n"
                              "chatd_upgrades_refused_total %" PRIu64 "\n",
                         SUM(upgrades), SUM(upgrades_refused));
    rc |= metrics_printf(out, "# TYPE chatd_messages_received_total counter\n"
                              "chatd_messages_received_total %" PRIu64 "\n"
                              "# TYPE chatd_messages_delivered_total counter\n"
                              "chatd_messages_delivered_total %" PRIu64 "\n",
                         SUM(messages_received), SUM(messages_delivered));
    rc |= metrics_printf(out, "# TYPE chatd_errors_total counter\n");
    for (size_t e = 0; e < nerrors && e < METRICS_ERRORS; e++) {
        if (error_names[e] != NULL) {
            rc |= metrics_printf(out, "chatd_errors_total{code=\"%s\"} %" PRIu64 "\n",
                                 error_names[e], SUM(errors[e]));
        }
    }
    rc |= metrics_printf(out, "# HELP chatd_delivery_latency_seconds Publish to write.\n"
                              "# TYPE chatd_delivery_latency_seconds histogram\n");
    uint64_t cum = 0;
    for (int b = 0; b < METRICS_LAT_BUCKETS; b++) {
        cum += SUM(latency_buckets[b]);
        rc |= metrics_printf(out, "chatd_delivery_latency_seconds_bucket{le=\"%g\"} %" PRIu64 "\n",
                             (double)metrics_bounds_us[b] / 1e6, cum);
    }
    uint64_t count = SUM(latency_count);
    rc |= metrics_printf(out, "chatd_delivery_latency_seconds_bucket{le=\"+Inf\"} %" PRIu64 "\n"
                              "chatd_delivery_latency_seconds_sum %.6f\n"
                              "chatd_delivery_latency_seconds_count %" PRIu64 "\n",
                         count, (double)SUM(latency_sum_us) / 1e6, count);
    rc |= metrics_printf(out, "# HELP chatd_queue_depth Messages waiting to be archived.\n"
                              "# TYPE chatd_queue_depth gauge\nchatd_queue_depth %" PRIu64 "\n",
                         metrics_get(&m->queue_depth));
    int32_t mongo = __atomic_load_n(&m->mongo_up, __ATOMIC_RELAXED);
    if (mongo >= 0) {
        rc |= metrics_printf(out, "# TYPE chatd_mongo_up gauge\nchatd_mongo_up %d\n", mongo);
    }
    rc |= metrics_printf(out, "# TYPE chatd_rooms gauge\nchatd_rooms %" PRIu64 "\n", SUM(rooms));
    rc |= metrics_printf(out, "# HELP chatd_deflate_in_bytes_total Frame payload compressed for permessage-deflate.\n"
                              "# TYPE chatd_deflate_in_bytes_total counter\nchatd_deflate_in_bytes_total %" PRIu64 "\n"
                              "# TYPE chatd_deflate_out_bytes_total counter\nchatd_deflate_out_bytes_total %" PRIu64 "\n",
                         SUM(deflate_in_bytes), SUM(deflate_out_bytes));
    rc |= metrics_printf(out, "# HELP chatd_tls_handshakes_total TLS handshakes completed.\n"
                              "# TYPE chatd_tls_handshakes_total counter\nchatd_tls_handshakes_total %" PRIu64 "\n"
                              "# HELP chatd_tls_handshake_failures_total TLS connections refused or failed before "
                              "their handshake completed.\n"
                              "# TYPE chatd_tls_handshake_failures_total counter\n"
                              "chatd_tls_handshake_failures_total %" PRIu64 "\n",
                         SUM(tls_handshakes), SUM(tls_failures));
    rc |= metrics_printf(out, "# TYPE chatd_files_uploaded_total counter\nchatd_files_uploaded_total %" PRIu64 "\n"
                              "# TYPE chatd_file_upload_bytes_total counter\nchatd_file_upload_bytes_total %" PRIu64 "\n"
                              "# TYPE chatd_files_downloaded_total counter\nchatd_files_downloaded_total %" PRIu64 "\n"
                              "# TYPE chatd_file_download_bytes_total counter\n"
                              "chatd_file_download_bytes_total %" PRIu64 "\n"
                              "# HELP chatd_file_transfers Uploads and downloads under way.\n"
                              "# TYPE chatd_file_transfers gauge\nchatd_file_transfers %" PRIu64 "\n",
                         SUM(files_uploaded), SUM(file_upload_bytes), SUM(files_downloaded),
                         SUM(file_download_bytes), SUM(file_transfers));
    rc |= metrics_printf(out, "# TYPE chatd_redis_up gauge\nchatd_redis_up %" PRIu64 "\n", SUM(redis_up));
    rc |= metrics_render_nodes(m, out);
    return rc == 0 ? 0 : -1;
}
