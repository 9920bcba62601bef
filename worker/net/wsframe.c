#include "wsframe.h"

#include <stdlib.h>
#include <string.h>

/* RFC 6455 5.2: FIN + opcode, then a 7-bit, 16-bit or 64-bit length; no
 * mask from a server. Returns the header's length. */
static size_t wsframe_header(uint8_t *h, uint8_t first, uint64_t len)
{
    h[0] = first;
    if (len < 126) {
        h[1] = (uint8_t)len;
        return 2;
    }
    if (len <= 0xffff) {
        h[1] = 126;
        h[2] = (uint8_t)(len >> 8);
        h[3] = (uint8_t)len;
        return 4;
    }
    h[1] = 127;
    for (int i = 0; i < 8; i++) {
        h[2 + i] = (uint8_t)(len >> (56 - 8 * i));
    }
    return 10;
}

wsframe_t *wsframe_text(const char *a, size_t alen, const char *b, size_t blen,
                        const char *c, size_t clen)
{
    size_t plen = alen + blen + clen;
    if (plen > WSFRAME_MAX_PAYLOAD) {
        return NULL;
    }
    uint8_t h[10];
    size_t hlen = wsframe_header(h, 0x81, plen);
    wsframe_t *f = wsframe_new(hlen + plen);
    if (f == NULL) {
        return NULL;
    }
    uint8_t *p = f->data;
    memcpy(p, h, hlen);
    p += hlen;
    if (alen > 0) {
        memcpy(p, a, alen);
        p += alen;
    }
    if (blen > 0) {
        memcpy(p, b, blen);
        p += blen;
    }
    if (clen > 0) {
        memcpy(p, c, clen);
    }
    return f;
}

wsframe_t *wsframe_new(size_t len)
{
    if (len > WSFRAME_MAX_PAYLOAD) {
        return NULL;
    }
    wsframe_t *f = malloc(sizeof(*f) + len);
    if (f == NULL) {
        return NULL;
    }
    f->refs = 1;
    f->len = (uint32_t)len;
    f->alt = NULL;
    f->alt_done = 0;
    return f;
}

wsframe_t *wsframe_data(uint8_t first, const void *payload, size_t plen)
{
    if (plen > WSFRAME_MAX_PAYLOAD) {
        return NULL;
    }
    uint8_t h[10];
    size_t hlen = wsframe_header(h, first, plen);
    wsframe_t *f = wsframe_new(hlen + plen);
    if (f != NULL) {
        memcpy(f->data, h, hlen);
        if (plen > 0) {
            memcpy(f->data + hlen, payload, plen);
        }
    }
    return f;
}

wsframe_t *wsframe_raw(const void *bytes, size_t len)
{
    wsframe_t *f = wsframe_new(len);
    if (f != NULL && len > 0) {
        memcpy(f->data, bytes, len);
    }
    return f;
}

void wsframe_unref(wsframe_t *f)
{
    if (f != NULL && --f->refs == 0) {
        wsframe_unref(f->alt);
        free(f);
    }
}
