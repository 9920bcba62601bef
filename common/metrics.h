/*
 * metrics: counters every worker writes into its own slot of one shared
 * anonymous mapping the master creates before forking. Any worker renders
 * the sum for GET /metrics, so the page covers the whole server. Each slot
 * has a single writer; readers use relaxed atomic loads.
 */
#ifndef CHATD_METRICS_H
#define CHATD_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"

#define METRICS_SLOTS 128
#define METRICS_ERRORS 16
#define METRICS_LAT_BUCKETS 14

#define METRICS_REDIS_NODES 32

/* One Redis node as one worker sees it. addr is written by the worker when
 * it starts using the entry ("" when never used). */
typedef struct metrics_node_s {
    char addr[64];                  /* "host:port" */
    uint64_t serving;               /* gauge: the node serves slots (a master in use) */
    uint64_t up;                    /* gauge: both links up */
    uint64_t commands;
    uint64_t errors;                /* error replies, redirections aside */
    uint64_t reconnects;            /* links lost */
    uint64_t redirects;             /* MOVED and ASK answers */
} metrics_node_t;

typedef struct metrics_slot_s {
    int32_t pid;                    /* 0 when the slot is unused */
    int32_t generation;
    uint64_t started_ms;
    uint64_t connections;           /* gauge: open WebSocket sessions */
    uint64_t upgrades;
    uint64_t upgrades_refused;
    uint64_t messages_received;     /* chat accepted from clients */
    uint64_t messages_delivered;    /* chat frames queued to clients */
    uint64_t errors[METRICS_ERRORS];
    uint64_t latency_buckets[METRICS_LAT_BUCKETS];
    uint64_t latency_count;
    uint64_t latency_sum_us;
    uint64_t redis_up;              /* gauge */
    uint64_t rooms;                 /* gauge */
    uint64_t files_uploaded;        /* answered 201 */
    uint64_t file_upload_bytes;
    uint64_t files_downloaded;      /* answered 200 or 206 */
    uint64_t file_download_bytes;   /* body bytes queued to readers */
    uint64_t file_transfers;        /* gauge: uploads and downloads under way */
    uint64_t deflate_in_bytes;      /* payload bytes compressed (permessage-deflate) */
    uint64_t deflate_out_bytes;     /* what they became */
    uint64_t tls_handshakes;        /* TLS handshakes completed */
    uint64_t tls_failures;          /* TLS connections that failed before one */
    metrics_node_t redis_nodes[METRICS_REDIS_NODES];
} metrics_slot_t;

typedef struct metrics_s {
    int32_t workers;                /* gauge, set by the master */
    int32_t mongo_up;               /* -1 when no archive is configured */
    uint64_t queue_depth;           /* messages waiting for the database (the
                                     * archive stream's length, one for all) */
    metrics_slot_t slot[METRICS_SLOTS];
} metrics_t;

/* Maps a zeroed shared page. Returns NULL (errno set) on failure. */
metrics_t *metrics_create(void);

void metrics_add(uint64_t *counter, uint64_t n);
void metrics_set(uint64_t *gauge, uint64_t v);
uint64_t metrics_get(const uint64_t *counter);

/* Counts one error of the given code (a proto_err_t, or PROTO_E_COUNT for
 * a slow consumer); codes out of range are ignored. */
void metrics_count_error(metrics_slot_t *s, int code);

/* Records one delivery latency in microseconds. */
void metrics_observe_latency(metrics_slot_t *s, uint64_t us);

/* Appends the Prometheus text of the whole server to out. Returns 0 or -1. */
int metrics_render(const metrics_t *m, const char *const *error_names, size_t nerrors, buf_t *out);

#endif
