/* pool: fixed-size objects from blocks, recycled through a free list. */
#include "unit.h"
#include "../../common/pool.h"

#include <stdint.h>
#include <string.h>

TEST(objects_are_zeroed_aligned_distinct_and_recycled)
{
    pool_t p;
    pool_init(&p, 40, 4);
    CHECK_EQ_INT((long long)p.size, 48);
    void *objs[10];
    for (int i = 0; i < 10; i++) {     /* three blocks */
        objs[i] = pool_alloc(&p);
        REQUIRE(objs[i] != NULL);
        CHECK_EQ_INT((long long)((uintptr_t)objs[i] % 16), 0);
        const unsigned char *b = objs[i];
        int zero = 1;
        for (size_t k = 0; k < p.size; k++) {
            zero &= b[k] == 0;
        }
        CHECK(zero);
        memset(objs[i], 0xab, p.size);  /* ASan: the whole object is ours */
        for (int j = 0; j < i; j++) {
            CHECK(objs[j] != objs[i]);
        }
    }
    pool_release(&p, objs[3]);
    pool_release(&p, objs[7]);
    void *a = pool_alloc(&p);
    void *b = pool_alloc(&p);
    CHECK(a == objs[7] && b == objs[3]);    /* last released, first reused */
    CHECK(((unsigned char *)a)[0] == 0);    /* zeroed again */
    pool_free(&p);
    CHECK(p.blocks == NULL && p.free == NULL);
}

TEST(tiny_objects_still_hold_the_link)
{
    pool_t p;
    pool_init(&p, 1, 0);
    CHECK(p.size >= sizeof(void *));
    CHECK_EQ_INT((long long)p.per_block, 1);
    void *a = pool_alloc(&p);
    REQUIRE(a != NULL);
    pool_release(&p, a);
    CHECK(pool_alloc(&p) == a);
    pool_free(&p);
}

int main(void)
{
    return unit_main();
}
