/* wsframe and outq: frames built once and shared by reference, and a
 * connection's queue of them (what one writev sends). */
#include "unit.h"
#include "../../worker/net/outq.h"
#include "../../worker/net/wsframe.h"

#include <stdlib.h>
#include <string.h>

/* Concatenates what outq_iov() hands the socket. */
static size_t gather(const outq_t *q, char *out, size_t cap)
{
    uv_buf_t iov[64];
    int n = outq_iov(q, iov, 64);
    size_t len = 0;
    for (int i = 0; i < n && len + iov[i].len <= cap; i++) {
        memcpy(out + len, iov[i].base, iov[i].len);
        len += iov[i].len;
    }
    return len;
}

TEST(text_frame_headers_for_each_length_class)
{
    static char big[70000];
    memset(big, 'x', sizeof(big));
    wsframe_t *f = wsframe_text("ab", 2, "c", 1, NULL, 0);
    REQUIRE(f != NULL);
    CHECK_EQ_INT(f->len, 5);
    CHECK_EQ_INT(f->data[0], 0x81);         /* FIN + text */
    CHECK_EQ_INT(f->data[1], 3);            /* unmasked, 7-bit length */
    CHECK(memcmp(f->data + 2, "abc", 3) == 0);
    wsframe_unref(f);

    f = wsframe_text(big, 126, NULL, 0, NULL, 0);
    REQUIRE(f != NULL);
    CHECK_EQ_INT(f->data[1], 126);
    CHECK_EQ_INT((f->data[2] << 8) | f->data[3], 126);
    CHECK_EQ_INT(f->len, 4 + 126);
    wsframe_unref(f);

    f = wsframe_text(big, 65535, NULL, 0, NULL, 0);
    REQUIRE(f != NULL);
    CHECK_EQ_INT(f->data[1], 126);
    CHECK_EQ_INT(f->len, 4 + 65535);
    wsframe_unref(f);

    f = wsframe_text(big, 40000, big, 30000, "}", 1);
    REQUIRE(f != NULL);
    CHECK_EQ_INT(f->data[1], 127);
    uint64_t len = 0;
    for (int i = 2; i < 10; i++) {
        len = (len << 8) | f->data[i];
    }
    CHECK_EQ_INT((long long)len, 70001);
    CHECK_EQ_INT(f->len, 10 + 70001);
    CHECK_EQ_INT(f->data[f->len - 1], '}');
    wsframe_unref(f);
}

TEST(shared_frame_lives_until_the_last_queue_lets_go)
{
    outq_t *a = NULL, *b = NULL;
    wsframe_t *f = wsframe_text("hello", 5, NULL, 0, NULL, 0);
    REQUIRE(f != NULL);
    REQUIRE_EQ_INT(outq_push(&a, wsframe_ref(f)), 0);
    REQUIRE_EQ_INT(outq_push(&b, wsframe_ref(f)), 0);
    CHECK_EQ_INT(f->refs, 3);
    wsframe_unref(f);                       /* the builder's reference */
    CHECK_EQ_INT(f->refs, 2);
    outq_consume(a, 7);
    CHECK_EQ_INT(f->refs, 1);
    CHECK_EQ_INT(outq_len(a), 0);
    CHECK_EQ_INT((long long)outq_bytes(b), 7);
    outq_clear(&b);                         /* frees it; ASan would see a leak or a double free */
    outq_clear(&a);
}

TEST(partial_writes_resume_mid_frame_in_order)
{
    outq_t *q = NULL;
    const char *parts[] = { "one", "two!", "three", "four..." };
    char want[64];
    size_t wlen = 0;
    for (int i = 0; i < 4; i++) {
        wsframe_t *f = wsframe_raw(parts[i], strlen(parts[i]));
        REQUIRE(f != NULL);
        REQUIRE_EQ_INT(outq_push(&q, f), 0);
        memcpy(want + wlen, parts[i], strlen(parts[i]));
        wlen += strlen(parts[i]);
    }
    CHECK_EQ_INT((long long)outq_bytes(q), (long long)wlen);
    /* The socket takes 2 bytes, then 5, then the rest. */
    size_t done = 0;
    size_t steps[] = { 2, 5, wlen - 7 };
    for (int s = 0; s < 3; s++) {
        char got[64];
        size_t n = gather(q, got, sizeof(got));
        CHECK_EQ_INT((long long)n, (long long)(wlen - done));
        CHECK(memcmp(got, want + done, n) == 0);
        outq_consume(q, steps[s]);
        done += steps[s];
    }
    CHECK_EQ_INT(outq_len(q), 0);
    CHECK_EQ_INT((long long)outq_bytes(q), 0);
    outq_trim(&q);
    CHECK(q == NULL);
}

TEST(ring_grows_across_the_wrap)
{
    outq_t *q = NULL;
    /* Push and consume so that head wraps, then grow while wrapped. */
    for (int round = 0; round < 3; round++) {
        for (int i = 0; i < 6; i++) {
            char c = (char)('a' + i);
            REQUIRE_EQ_INT(outq_push(&q, wsframe_raw(&c, 1)), 0);
        }
        outq_consume(q, 5);
    }
    for (int i = 0; i < 20; i++) {
        char c = (char)('A' + i);
        REQUIRE_EQ_INT(outq_push(&q, wsframe_raw(&c, 1)), 0);
    }
    char got[64];
    size_t n = gather(q, got, sizeof(got));
    CHECK_EQ_INT((long long)n, 3 + 20);
    CHECK(memcmp(got, "defABCDEFGHIJKLMNOPQRST", n) == 0);
    outq_clear(&q);
}

TEST(slow_consumer_drop_keeps_only_the_started_frame)
{
    outq_t *q = NULL;
    REQUIRE_EQ_INT(outq_push(&q, wsframe_raw("aaaa", 4)), 0);
    REQUIRE_EQ_INT(outq_push(&q, wsframe_raw("bbbb", 4)), 0);
    REQUIRE_EQ_INT(outq_push(&q, wsframe_raw("cccc", 4)), 0);
    outq_consume(q, 1);                    /* "a" is out: its tail must follow */
    outq_drop_unstarted(q);
    char got[16];
    size_t n = gather(q, got, sizeof(got));
    CHECK_EQ_INT((long long)n, 3);
    CHECK(memcmp(got, "aaa", 3) == 0);
    CHECK_EQ_INT((long long)outq_bytes(q), 3);

    /* A write in flight pins what it points into. */
    REQUIRE_EQ_INT(outq_push(&q, wsframe_raw("dddd", 4)), 0);
    REQUIRE_EQ_INT(outq_push(&q, wsframe_raw("eeee", 4)), 0);
    outq_pin(q, 2);
    outq_drop_unstarted(q);
    n = gather(q, got, sizeof(got));
    CHECK_EQ_INT((long long)n, 7);
    CHECK(memcmp(got, "aaadddd", 7) == 0);
    outq_consume(q, 7);
    CHECK_EQ_INT(q->pinned, 0);

    /* Nothing started, nothing pinned: everything goes. */
    REQUIRE_EQ_INT(outq_push(&q, wsframe_raw("ffff", 4)), 0);
    outq_drop_unstarted(q);
    CHECK_EQ_INT(outq_len(q), 0);
    CHECK_EQ_INT((long long)outq_bytes(q), 0);
    outq_clear(&q);
}

int main(void)
{
    return unit_main();
}
