/*
 * Unit tests of common/words.c: the search words of a text and the match
 * rule of the contract's search.
 */
#include "unit.h"
#include "../../common/words.h"

/* The words of text joined with spaces, into out. */
static const char *joined(const char *text, char *out, size_t size)
{
    words_t w;
    out[0] = '\0';
    if (words_of(text, strlen(text), &w) != 0) {
        snprintf(out, size, "<oom>");
        return out;
    }
    size_t at = 0;
    for (const char *x = w.n > 0 ? w.buf : NULL; x != NULL; x = words_next(&w, x)) {
        at += (size_t)snprintf(out + at, size - at, "%s%s", at ? " " : "", x);
    }
    words_free(&w);
    return out;
}

static int matches(const char *message, const char *query)
{
    words_t m, q;
    if (words_of(message, strlen(message), &m) != 0 || words_of(query, strlen(query), &q) != 0) {
        return -1;
    }
    int r = words_match(&m, &q);
    words_free(&m);
    words_free(&q);
    return r;
}

TEST(words_split_on_anything_but_letters_and_digits)
{
    char b[256];
    CHECK_STR_EQ(joined("Hello, world! 42 times_over-again", b, sizeof(b)), "hello world 42 times over again");
    CHECK_STR_EQ(joined("  \t\n", b, sizeof(b)), "");
    CHECK_STR_EQ(joined("", b, sizeof(b)), "");
    CHECK_STR_EQ(joined("a.b", b, sizeof(b)), "a b");
}

TEST(words_fold_case_and_latin_accents)
{
    char b[256];
    CHECK_STR_EQ(joined("Élan CAFÉ naïve Ångström", b, sizeof(b)), "elan cafe naive angstrom");
    /* Full case folding: the sharp s is "ss". */
    CHECK_STR_EQ(joined("Straße", b, sizeof(b)), "strasse");
    /* A decomposed accent (e + U+0301) is the same word. */
    CHECK_STR_EQ(joined("Cafe\xCC\x81", b, sizeof(b)), "cafe");
}

TEST(words_of_other_scripts_keep_their_marks)
{
    char b[256];
    CHECK_STR_EQ(joined("Привет МИР", b, sizeof(b)), "привет мир");
    /* Greek is not Latin: the tonos stays. */
    CHECK_STR_EQ(joined("ΣΟΦΊΑ", b, sizeof(b)), "σοφία");
    /* A Devanagari word with its vowel signs (marks) stays one word. */
    CHECK_STR_EQ(joined("हिंदी भाषा", b, sizeof(b)), "हिंदी भाषा");
    CHECK_STR_EQ(joined("東京、大阪", b, sizeof(b)), "東京 大阪");
    CHECK_STR_EQ(joined("한국어", b, sizeof(b)), "한국어");
}

TEST(words_are_distinct)
{
    char b[256];
    CHECK_STR_EQ(joined("the cat and THE hat and the", b, sizeof(b)), "the cat and hat");
    words_t w;
    REQUIRE(words_of("a A á", 6, &w) == 0);
    CHECK_EQ_INT(w.n, 1);
    words_free(&w);
}

TEST(match_every_word)
{
    CHECK_EQ_INT(matches("The quick brown fox", "quick fox"), 1);
    CHECK_EQ_INT(matches("The quick brown fox", "fox quick"), 1);
    CHECK_EQ_INT(matches("The quick brown fox", "quick dog"), 0);
    CHECK_EQ_INT(matches("Café au lait", "CAFE"), 1);
    CHECK_EQ_INT(matches("", "x"), 0);
}

TEST(match_last_word_as_prefix_from_two_characters)
{
    CHECK_EQ_INT(matches("deployment tomorrow", "deplo"), 1);
    CHECK_EQ_INT(matches("deployment tomorrow", "tom deplo"), 0);     /* only the last word */
    CHECK_EQ_INT(matches("deployment tomorrow", "tomorrow de"), 1);
    CHECK_EQ_INT(matches("deployment tomorrow", "d"), 0);             /* one character: exact */
    CHECK_EQ_INT(matches("a b", "b"), 1);
    /* Characters, not bytes: one Hangul syllable is not a prefix of two. */
    CHECK_EQ_INT(matches("한국어", "한"), 0);
    CHECK_EQ_INT(matches("한국어", "한국"), 1);
    /* "하" must not match "한" by its decomposed letters. */
    CHECK_EQ_INT(matches("한국", "하국"), 0);
}

TEST(words_chars_counts_code_points)
{
    CHECK_EQ_INT(words_chars("abc"), 3);
    CHECK_EQ_INT(words_chars("été"), 3);
    CHECK_EQ_INT(words_chars("한국"), 2);
}

int main(void)
{
    return unit_main();
}
