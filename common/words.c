#include "words.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <unicase.h>
#include <unictype.h>
#include <uninorm.h>
#include <unistr.h>

void words_free(words_t *w)
{
    free(w->buf);
    memset(w, 0, sizeof(*w));
}

const char *words_next(const words_t *w, const char *word)
{
    const char *next = word + strlen(word) + 1;
    return next < w->buf + w->len ? next : NULL;
}

size_t words_chars(const char *word)
{
    size_t n = 0;
    for (; *word != '\0'; word++) {
        n += ((unsigned char)*word & 0xC0) != 0x80;
    }
    return n;
}

static uint64_t words_hash(const char *s)
{
    uint64_t h = 1469598103934665603ULL;
    for (; *s != '\0'; s++) {
        h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    }
    return h;
}

/* Keeps the first of each word of w (n words in buf), in place. A hash
 * set of offsets keeps it linear: a 16 KiB message can hold thousands. */
static int words_dedup(words_t *w)
{
    size_t cap = 16;
    while (cap < w->n * 2) {
        cap *= 2;
    }
    size_t *set = calloc(cap, sizeof(*set));   /* offset + 1; 0 = empty */
    if (set == NULL) {
        return -1;
    }
    size_t in = 0, outp = 0, kept = 0;
    while (in < w->len) {
        const char *word = w->buf + in;
        size_t n = strlen(word) + 1;
        size_t i = words_hash(word) & (cap - 1);
        int seen = 0;
        for (; set[i] != 0; i = (i + 1) & (cap - 1)) {
            if (strcmp(w->buf + set[i] - 1, word) == 0) {
                seen = 1;
                break;
            }
        }
        if (!seen) {
            memmove(w->buf + outp, word, n);
            set[i] = outp + 1;
            outp += n;
            kept++;
        }
        in += n;
    }
    free(set);
    w->len = outp;
    w->n = kept;
    return 0;
}

int words_of(const char *text, size_t len, words_t *out)
{
    memset(out, 0, sizeof(*out));
    if (len == 0) {
        return 0;
    }
    /* Case-folded and decomposed (NFD): "É" becomes "e" and a combining
     * acute accent, which is dropped below for Latin letters. */
    size_t flen = 0;
    uint8_t *f = u8_casefold((const uint8_t *)text, len, NULL, UNINORM_NFD, NULL, &flen);
    if (f == NULL) {
        return -1;
    }
    /* Each word gains a NUL and loses at least one separator, but the last:
     * flen + 1 bytes always suffice. */
    out->buf = malloc(flen + 1);
    if (out->buf == NULL) {
        free(f);
        return -1;
    }
    size_t pos = 0;
    int in_word = 0, latin_base = 0;
    while (pos < flen) {
        ucs4_t uc;
        int n = u8_mbtouc(&uc, f + pos, flen - pos);
        if (n <= 0) {
            n = 1;
            uc = 0xFFFD;
        }
        if (uc_is_general_category(uc, UC_CATEGORY_M)) {
            /* A mark belongs to its letter, but Latin letters lose theirs. */
            if (in_word && !latin_base) {
                memcpy(out->buf + out->len, f + pos, (size_t)n);
                out->len += (size_t)n;
            }
        } else if (uc_is_general_category(uc, UC_CATEGORY_L) || uc_is_general_category(uc, UC_CATEGORY_N)) {
            const uc_script_t *script = uc_script(uc);
            latin_base = script != NULL && strcmp(script->name, "Latin") == 0;
            in_word = 1;
            memcpy(out->buf + out->len, f + pos, (size_t)n);
            out->len += (size_t)n;
        } else if (in_word) {
            out->buf[out->len++] = '\0';
            out->n++;
            in_word = 0;
            latin_base = 0;
        }
        pos += (size_t)n;
    }
    if (in_word) {
        out->buf[out->len++] = '\0';
        out->n++;
    }
    free(f);
    if (out->n == 0) {
        words_free(out);
        return 0;
    }
    /* Composed again (NFC), so that a prefix is made of whole characters
     * of other scripts too (a Hangul syllable is three letters in NFD).
     * The NULs between words are starters: nothing composes across. */
    size_t nlen = 0;
    uint8_t *nfc = u8_normalize(UNINORM_NFC, (const uint8_t *)out->buf, out->len, NULL, &nlen);
    if (nfc == NULL) {
        words_free(out);
        return -1;
    }
    free(out->buf);
    out->buf = (char *)nfc;
    out->len = nlen;
    if (words_dedup(out) != 0) {
        words_free(out);
        return -1;
    }
    return 0;
}

int words_match(const words_t *msg, const words_t *q)
{
    if (q->n == 0) {
        return 0;
    }
    for (const char *qw = q->buf; qw != NULL; qw = words_next(q, qw)) {
        int last = words_next(q, qw) == NULL;
        size_t ql = strlen(qw);
        int prefix = last && words_chars(qw) >= 2;
        int found = 0;
        for (const char *mw = msg->n > 0 ? msg->buf : NULL; mw != NULL && !found; mw = words_next(msg, mw)) {
            found = prefix ? strncmp(mw, qw, ql) == 0 : strcmp(mw, qw) == 0;
        }
        if (!found) {
            return 0;
        }
    }
    return 1;
}
