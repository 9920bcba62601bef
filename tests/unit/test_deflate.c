/* Unit tests of worker/net/deflate: the offer rules of RFC 7692 as chatd
 * accepts them, compress-once frames, and inflating with a limit. */
#include "unit.h"

#include "../../worker/net/deflate.h"

TEST(negotiate_offers)
{
    CHECK(deflate_negotiate("permessage-deflate"));
    CHECK(deflate_negotiate("permessage-deflate; client_max_window_bits"));           /* browsers */
    CHECK(deflate_negotiate("Permessage-Deflate ;client_max_window_bits=12 ; server_no_context_takeover"));
    CHECK(deflate_negotiate("permessage-deflate; server_max_window_bits=15; client_no_context_takeover"));
    CHECK(deflate_negotiate("permessage-deflate; client_max_window_bits=\"10\""));
    CHECK(deflate_negotiate("x-webkit-deflate-frame, permessage-deflate"));
    /* a second offer is taken when the first cannot be */
    CHECK(deflate_negotiate("permessage-deflate; server_max_window_bits=10, permessage-deflate"));
    CHECK(!deflate_negotiate(""));
    CHECK(!deflate_negotiate("x-webkit-deflate-frame"));
    CHECK(!deflate_negotiate("permessage-deflate; server_max_window_bits=10"));
    CHECK(!deflate_negotiate("permessage-deflate; server_max_window_bits"));
    CHECK(!deflate_negotiate("permessage-deflate; client_max_window_bits=7"));
    CHECK(!deflate_negotiate("permessage-deflate; client_max_window_bits=16"));
    CHECK(!deflate_negotiate("permessage-deflate; mystery"));
    CHECK(!deflate_negotiate("permessage-deflate; server_no_context_takeover; server_no_context_takeover"));
    CHECK(!deflate_negotiate("permessage-deflate; server_no_context_takeover=1"));
    CHECK(!deflate_negotiate("permessage-deflatex"));
}

TEST(frames_compressed_once_and_inflated_back)
{
    deflate_t d;
    REQUIRE(deflate_init(&d) == 0);
    char text[600];
    for (size_t i = 0; i < sizeof(text); i++) {
        text[i] = "{\"type\":\"chat\",\"payload\":{\"content\":\"hello\"}}"[i % 44];
    }
    wsframe_t *f = wsframe_text(text, sizeof(text), NULL, 0, NULL, 0);
    REQUIRE(f != NULL);
    wsframe_t *z = deflate_frame(&d, f);
    CHECK(z != f && z == f->alt);
    CHECK(z->data[0] == 0xC1);                   /* FIN, RSV1, text */
    CHECK(z->len < f->len / 4);
    CHECK(deflate_frame(&d, f) == z);            /* made once */
    size_t hlen = (z->data[1] & 0x7f) < 126 ? 2 : 4;
    buf_t out = { 0 };
    CHECK_EQ_INT(deflate_inflate(&d, z->data + hlen, z->len - hlen, 1 << 20, &out), 0);
    CHECK(out.len == sizeof(text) && memcmp(out.data, text, sizeof(text)) == 0);
    /* The limit is on the inflated size: a bomb stops at it. */
    CHECK_EQ_INT(deflate_inflate(&d, z->data + hlen, z->len - hlen, sizeof(text) - 1, &out), -1);
    CHECK_EQ_INT(deflate_inflate(&d, (const uint8_t *)"\xff\xff\xff", 3, 1 << 20, &out), -2);
    wsframe_unref(f);                            /* frees its alt too (ASan checks) */

    /* Short frames, and control frames, go as they are. */
    f = wsframe_text("hi", 2, NULL, 0, NULL, 0);
    CHECK(deflate_frame(&d, f) == f);
    wsframe_unref(f);
    uint8_t ping[2] = { 0x89, 0 };
    f = wsframe_raw(ping, 2);
    CHECK(deflate_frame(&d, f) == f);
    wsframe_unref(f);
    CHECK(d.bytes_in == sizeof(text) && d.bytes_out > 0 && d.bytes_out < d.bytes_in);
    buf_free(&out);
    deflate_free(&d);
}

int main(void)
{
    return unit_main();
}
