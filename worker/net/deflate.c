#include "deflate.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* RFC 7692 7.2.1: a compressed message ends with this empty block, which
 * the sender removes and the receiver puts back. */
static const uint8_t deflate_tail[4] = { 0x00, 0x00, 0xff, 0xff };

/* Skips blanks. */
static const char *deflate_ws(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\t')) {
        p++;
    }
    return p;
}

/* One offer, [p, end): "permessage-deflate" and its parameters. */
static int deflate_offer_ok(const char *p, const char *end)
{
    static const char name[] = "permessage-deflate";
    p = deflate_ws(p, end);
    size_t n = sizeof(name) - 1;
    if ((size_t)(end - p) < n || strncasecmp(p, name, n) != 0) {
        return 0;
    }
    p = deflate_ws(p + n, end);
    unsigned seen = 0;
    while (p < end) {
        if (*p != ';') {
            return 0;
        }
        p = deflate_ws(p + 1, end);
        const char *k = p;
        while (p < end && (isalnum((unsigned char)*p) || *p == '_')) {
            p++;
        }
        size_t klen = (size_t)(p - k);
        p = deflate_ws(p, end);
        const char *v = NULL;
        size_t vlen = 0;
        if (p < end && *p == '=') {
            p = deflate_ws(p + 1, end);
            int quoted = p < end && *p == '"';
            p += quoted;
            v = p;
            while (p < end && isdigit((unsigned char)*p)) {
                p++;
            }
            vlen = (size_t)(p - v);
            if (quoted) {
                if (p >= end || *p != '"') {
                    return 0;
                }
                p++;
            }
            p = deflate_ws(p, end);
        }
        int bits = 0;
        if (v != NULL) {
            if (vlen < 1 || vlen > 2) {
                return 0;
            }
            bits = v[0] - '0';
            if (vlen == 2) {
                bits = bits * 10 + (v[1] - '0');
            }
        }
        static const char *const params[] = { "server_no_context_takeover", "client_no_context_takeover",
                                              "server_max_window_bits", "client_max_window_bits" };
        int which = -1;
        for (int i = 0; i < 4; i++) {
            if (klen == strlen(params[i]) && strncasecmp(k, params[i], klen) == 0) {
                which = i;
            }
        }
        if (which < 0 || (seen & (1u << which)) != 0) {
            return 0;       /* unknown or given twice: this offer is declined */
        }
        seen |= 1u << which;
        if (which <= 1 && v != NULL) {
            return 0;       /* the two takeover parameters take no value */
        }
        if (which == 2 && (v == NULL || bits != 15)) {
            return 0;       /* one shared stream compresses with a 32 KiB window */
        }
        if (which == 3 && v != NULL && (bits < 8 || bits > 15)) {
            return 0;
        }
    }
    return 1;
}

int deflate_negotiate(const char *offers)
{
    const char *p = offers;
    const char *end = offers + strlen(offers);
    while (p < end) {
        /* Offers are separated by commas; parameter values here are
         * digits, so a comma never sits inside one. */
        const char *comma = memchr(p, ',', (size_t)(end - p));
        const char *stop = comma != NULL ? comma : end;
        if (deflate_offer_ok(p, stop)) {
            return 1;
        }
        p = comma != NULL ? comma + 1 : end;
    }
    return 0;
}

int deflate_init(deflate_t *d)
{
    memset(d, 0, sizeof(*d));
    /* Raw deflate (negative window bits), as the extension carries it. */
    if (deflateInit2(&d->out, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY) != Z_OK) {
        return -1;
    }
    d->out_ready = 1;
    if (inflateInit2(&d->in, -15) != Z_OK) {
        deflate_free(d);
        return -1;
    }
    d->in_ready = 1;
    return 0;
}

void deflate_free(deflate_t *d)
{
    if (d->out_ready) {
        deflateEnd(&d->out);
    }
    if (d->in_ready) {
        inflateEnd(&d->in);
    }
    d->out_ready = d->in_ready = 0;
}

/* The header length of a frame built by wsframe (unmasked). */
static size_t deflate_header_len(const wsframe_t *f)
{
    uint8_t b = f->data[1] & 0x7f;
    return b < 126 ? 2 : b == 126 ? 4 : 10;
}

wsframe_t *deflate_frame(deflate_t *d, wsframe_t *f)
{
    if (f->alt_done) {
        return f->alt != NULL ? f->alt : f;
    }
    f->alt_done = 1;
    /* Only whole text messages: control frames are never compressed. */
    if (!d->out_ready || f->len < 2 || f->data[0] != 0x81) {
        return f;
    }
    size_t hlen = deflate_header_len(f);
    size_t plen = f->len - hlen;
    if (plen < DEFLATE_MIN_PAYLOAD) {
        return f;
    }
    if (deflateReset(&d->out) != Z_OK) {
        return f;
    }
    size_t cap = deflateBound(&d->out, plen) + 16;
    uint8_t *buf = malloc(cap);
    if (buf == NULL) {
        return f;
    }
    d->out.next_in = f->data + hlen;
    d->out.avail_in = (uInt)plen;
    d->out.next_out = buf;
    d->out.avail_out = (uInt)cap;
    int rc = deflate(&d->out, Z_SYNC_FLUSH);
    size_t clen = cap - d->out.avail_out;
    if (rc != Z_OK || d->out.avail_in != 0 || clen < 4 ||
        memcmp(buf + clen - 4, deflate_tail, 4) != 0) {
        free(buf);
        return f;
    }
    clen -= 4;
    if (clen >= plen) {
        free(buf);
        return f;       /* nothing saved: the plain frame goes */
    }
    f->alt = wsframe_data(0x80 | 0x40 | 0x01, buf, clen);   /* FIN, RSV1, text */
    free(buf);
    if (f->alt == NULL) {
        return f;
    }
    d->bytes_in += plen;
    d->bytes_out += clen;
    return f->alt;
}

int deflate_inflate(deflate_t *d, const uint8_t *in, size_t len, size_t limit, buf_t *out)
{
    out->len = 0;
    if (!d->in_ready || inflateReset(&d->in) != Z_OK) {
        return -2;
    }
    const uint8_t *parts[2] = { in, deflate_tail };
    size_t lens[2] = { len, sizeof(deflate_tail) };
    uint8_t chunk[16384];
    for (int k = 0; k < 2; k++) {
        d->in.next_in = (Bytef *)parts[k];
        d->in.avail_in = (uInt)lens[k];
        while (d->in.avail_in > 0) {
            d->in.next_out = chunk;
            d->in.avail_out = sizeof(chunk);
            int rc = inflate(&d->in, Z_SYNC_FLUSH);
            size_t got = sizeof(chunk) - d->in.avail_out;
            if (rc != Z_OK && rc != Z_STREAM_END && rc != Z_BUF_ERROR) {
                return -2;
            }
            if (out->len + got > limit) {
                return -1;      /* a decompression bomb stops here */
            }
            if (got > 0 && buf_append(out, chunk, got) != 0) {
                return -1;
            }
            if (rc == Z_STREAM_END || (rc == Z_BUF_ERROR && got == 0)) {
                break;
            }
        }
    }
    return 0;
}
