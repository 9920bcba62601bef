#include "iplimit.h"

#include <stdlib.h>

static size_t iplimit_slot(const iplimit_t *t, uint32_t ip)
{
    return (size_t)((ip * 2654435761u) & (t->cap - 1));
}

static int iplimit_grow(iplimit_t *t)
{
    size_t cap = t->cap ? t->cap * 2 : 1024;
    uint32_t *ips = calloc(cap, sizeof(*ips));
    uint32_t *counts = calloc(cap, sizeof(*counts));
    if (ips == NULL || counts == NULL) {
        free(ips);
        free(counts);
        return -1;
    }
    iplimit_t n = { ips, counts, cap, 0 };
    for (size_t i = 0; i < t->cap; i++) {
        if (t->ips[i] != 0) {
            size_t k = iplimit_slot(&n, t->ips[i]);
            while (n.ips[k] != 0) {
                k = (k + 1) & (cap - 1);
            }
            n.ips[k] = t->ips[i];
            n.counts[k] = t->counts[i];
            n.used++;
        }
    }
    free(t->ips);
    free(t->counts);
    *t = n;
    return 0;
}

int iplimit_acquire(iplimit_t *t, uint32_t ip, uint32_t max)
{
    if (max == 0 || ip == 0) {
        return 0;
    }
    if ((t->used + 1) * 2 > t->cap && iplimit_grow(t) != 0) {
        return -1;
    }
    size_t k = iplimit_slot(t, ip);
    while (t->ips[k] != 0 && t->ips[k] != ip) {
        k = (k + 1) & (t->cap - 1);
    }
    if (t->ips[k] == 0) {
        t->ips[k] = ip;
        t->counts[k] = 0;
        t->used++;
    }
    if (t->counts[k] >= max) {
        return -1;
    }
    t->counts[k]++;
    return 0;
}

void iplimit_release(iplimit_t *t, uint32_t ip)
{
    if (ip == 0 || t->cap == 0) {
        return;
    }
    size_t k = iplimit_slot(t, ip);
    while (t->ips[k] != ip) {
        if (t->ips[k] == 0) {
            return;     /* never counted (no limit when it connected) */
        }
        k = (k + 1) & (t->cap - 1);
    }
    if (--t->counts[k] > 0) {
        return;
    }
    /* Remove, shifting back the entries that probed past this slot. */
    t->ips[k] = 0;
    t->used--;
    size_t j = k;
    for (;;) {
        j = (j + 1) & (t->cap - 1);
        if (t->ips[j] == 0) {
            return;
        }
        size_t home = iplimit_slot(t, t->ips[j]);
        /* Move j back to k when its home is not within (k, j]. */
        if ((j > k && (home <= k || home > j)) || (j < k && (home <= k && home > j))) {
            t->ips[k] = t->ips[j];
            t->counts[k] = t->counts[j];
            t->ips[j] = 0;
            k = j;
        }
    }
}

void iplimit_free(iplimit_t *t)
{
    free(t->ips);
    free(t->counts);
    t->ips = NULL;
    t->counts = NULL;
    t->cap = t->used = 0;
}
