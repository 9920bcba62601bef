/*
 * iplimit: how many connections each client address holds on this worker,
 * for --max-conns-per-ip. An open-addressing table of IPv4 addresses with
 * tombstone-free deletion (backward shift), owned by the worker.
 */
#ifndef CHATD_IPLIMIT_H
#define CHATD_IPLIMIT_H

#include <stddef.h>
#include <stdint.h>

typedef struct iplimit_s {
    uint32_t *ips;              /* 0 = empty slot */
    uint32_t *counts;
    size_t cap;                 /* a power of two, or 0 */
    size_t used;
} iplimit_t;

/*
 * Counts one more connection from ip (network order; 0 is not counted).
 * Returns 0, or -1 when ip already holds max connections (max 0 = no
 * limit) or memory ran out; nothing is counted then.
 */
int iplimit_acquire(iplimit_t *t, uint32_t ip, uint32_t max);

/* Counts one connection of ip less. */
void iplimit_release(iplimit_t *t, uint32_t ip);

void iplimit_free(iplimit_t *t);

#endif
