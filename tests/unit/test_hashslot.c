/* hashslot: Redis Cluster's key -> slot mapping, checked against what
 * Redis 7.0's CLUSTER KEYSLOT answers for the same keys. */
#include "unit.h"
#include "../../worker/data/hashslot.h"

#include <string.h>

static unsigned slot_of(const char *key)
{
    return hashslot_of(key, strlen(key));
}

TEST(crc16_xmodem_check_value)
{
    /* The catalogued check value of CRC-16/XMODEM. */
    CHECK_EQ_INT(hashslot_crc16("123456789", 9), 0x31C3);
}

TEST(plain_keys_match_redis)
{
    CHECK_EQ_INT(slot_of("foo"), 12182);
    CHECK_EQ_INT(slot_of("bar"), 5061);
    CHECK_EQ_INT(slot_of("hello"), 866);
    CHECK_EQ_INT(slot_of("123456789"), 12739);
}

TEST(hash_tags_follow_redis_rules)
{
    CHECK_EQ_INT(slot_of("{user1000}.following"), 3443);
    CHECK_EQ_INT(slot_of("{user1000}.followers"), 3443);
    /* An empty tag does not count: the whole key is hashed. */
    CHECK_EQ_INT(slot_of("foo{}{bar}"), 8363);
    CHECK_EQ_INT(slot_of("{}"), 15257);
    /* The first '{' and the first '}' after it. */
    CHECK_EQ_INT(slot_of("foo{{bar}}zap"), 4015);
    CHECK_EQ_INT(slot_of("foo{bar}{zap}"), 5061);
}

TEST(room_keys_and_channel_share_a_slot)
{
    CHECK_EQ_INT(slot_of("chatd:{general}"), 9981);
    CHECK_EQ_INT(slot_of("chatd:{general}:seq"), 9981);
    CHECK_EQ_INT(slot_of("chatd:{general}:d:5:alice:x1"), 9981);
}

TEST(length_not_nul_bounds_the_key)
{
    const char key[] = "foo-and-more";
    CHECK_EQ_INT(hashslot_of(key, 3), 12182);
    /* A tag cut short by the length is no tag. */
    const char tagged[] = "a{bc}";
    CHECK_EQ_INT(hashslot_of(tagged, 4), hashslot_crc16(tagged, 4) & 16383);
}

int main(void)
{
    return unit_main();
}
