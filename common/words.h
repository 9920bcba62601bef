/*
 * words: the search words of a text, as the contract's search defines
 * them: runs of letters and digits of any script (with the marks that
 * belong to them), case-folded, and Latin letters without their accents
 * ("Élan" and "elan" are one word). libunistring does the Unicode work
 * (case folding, decomposition, character classes and scripts).
 */
#ifndef CHATD_WORDS_H
#define CHATD_WORDS_H

#include <stddef.h>

#define WORDS_QUERY_MAX 10          /* words in a search */
#define WORDS_QUERY_BYTES 256       /* bytes of a search's text */

/* The distinct words of a text, in order of first appearance, each
 * NUL-terminated, back to back in buf. */
typedef struct words_s {
    char *buf;                  /* malloc'd; NULL when there are none */
    size_t len;                 /* bytes used in buf */
    size_t n;                   /* how many words */
} words_t;

/*
 * The words of text (len bytes of valid UTF-8). Returns 0 and fills *out
 * (release with words_free, also when n is 0), or -1 when memory ran out
 * (nothing to free).
 */
int words_of(const char *text, size_t len, words_t *out);

void words_free(words_t *w);

/* The word after w in w's buffer, or NULL after the last. */
const char *words_next(const words_t *w, const char *word);

/* Characters (code points) in word. */
size_t words_chars(const char *word);

/*
 * Whether a message whose words are msg matches a query whose words are
 * q: every word of q is a word of msg, except that the last word of q
 * may also be the start of one when it has at least 2 characters.
 */
int words_match(const words_t *msg, const words_t *q);

#endif
