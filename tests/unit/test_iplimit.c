/* iplimit: the per-address connection counts behind --max-conns-per-ip. */
#include "unit.h"
#include "../../worker/net/iplimit.h"

#include <stdlib.h>

TEST(no_limit_counts_nothing)
{
    iplimit_t t = { 0 };
    for (int i = 0; i < 100; i++) {
        CHECK_EQ_INT(iplimit_acquire(&t, 0x0100007f, 0), 0);
    }
    CHECK_EQ_INT((int)t.used, 0);
    iplimit_release(&t, 0x0100007f);     /* uncounted: harmless */
    iplimit_free(&t);
}

TEST(cap_is_enforced_per_address)
{
    iplimit_t t = { 0 };
    CHECK_EQ_INT(iplimit_acquire(&t, 1, 2), 0);
    CHECK_EQ_INT(iplimit_acquire(&t, 1, 2), 0);
    CHECK_EQ_INT(iplimit_acquire(&t, 1, 2), -1);
    CHECK_EQ_INT(iplimit_acquire(&t, 2, 2), 0);    /* another address is separate */
    iplimit_release(&t, 1);
    CHECK_EQ_INT(iplimit_acquire(&t, 1, 2), 0);
    CHECK_EQ_INT(iplimit_acquire(&t, 1, 2), -1);
    iplimit_free(&t);
}

TEST(many_addresses_grow_and_release_to_empty)
{
    iplimit_t t = { 0 };
    /* Enough to grow several times, with colliding probes. */
    for (uint32_t ip = 1; ip <= 5000; ip++) {
        REQUIRE_EQ_INT(iplimit_acquire(&t, ip * 7919u, 3), 0);
        REQUIRE_EQ_INT(iplimit_acquire(&t, ip * 7919u, 3), 0);
    }
    CHECK_EQ_INT((int)t.used, 5000);
    for (uint32_t ip = 1; ip <= 5000; ip++) {
        CHECK_EQ_INT(iplimit_acquire(&t, ip * 7919u, 3), 0);
        CHECK_EQ_INT(iplimit_acquire(&t, ip * 7919u, 3), -1);
    }
    /* Release in an order unrelated to insertion: backward-shift deletion
     * must keep every remaining entry findable. */
    for (uint32_t ip = 5000; ip >= 1; ip -= 2) {
        for (int k = 0; k < 3; k++) {
            iplimit_release(&t, ip * 7919u);
        }
    }
    CHECK_EQ_INT((int)t.used, 2500);
    for (uint32_t ip = 1; ip <= 5000; ip += 2) {
        CHECK_EQ_INT(iplimit_acquire(&t, ip * 7919u, 3), -1);    /* still at 3 */
    }
    for (uint32_t ip = 2; ip <= 5000; ip += 2) {
        CHECK_EQ_INT(iplimit_acquire(&t, ip * 7919u, 3), 0);     /* freed */
        iplimit_release(&t, ip * 7919u);
    }
    for (uint32_t ip = 1; ip <= 5000; ip += 2) {
        for (int k = 0; k < 3; k++) {
            iplimit_release(&t, ip * 7919u);
        }
    }
    CHECK_EQ_INT((int)t.used, 0);
    iplimit_free(&t);
}

int main(void)
{
    return unit_main();
}
