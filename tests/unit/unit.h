/*
 * unit.h: a tiny header-only test framework for chatd's in-memory unit
 * tests. Each test_*.c is one translation unit and one binary.
 *
 *     TEST(name) { CHECK(x > 0); CHECK_EQ_INT(f(), 3); CHECK_STR_EQ(s, "a"); }
 *     int main(void) { return unit_main(); }
 *
 * TEST() registers the function before main() runs (a constructor), so a
 * test cannot be forgotten in a list; they run in definition order.
 * CHECK* record a failure and go on (so cleanup still runs and ASan's leak
 * check stays quiet); REQUIRE* record it and return from the test, for
 * guards such as a NULL pointer about to be dereferenced.
 *
 * Output: "PASS name" or "FAIL name: file:line: expr" per test (a failed
 * test prints one FAIL line per failed check), then exactly one line
 * "N passed, N failed". The exit status is 1 when any test failed.
 */
#ifndef CHATD_UNIT_H
#define CHATD_UNIT_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define UNIT_MAX_TESTS 512

typedef struct {
    const char *name;
    void (*fn)(void);
} unit_test_t;

static unit_test_t unit_tests[UNIT_MAX_TESTS];
static int unit_ntests;
static const char *unit_current;
static int unit_failed_checks;  /* in the current test */

static void unit_register(const char *name, void (*fn)(void))
{
    if (unit_ntests == UNIT_MAX_TESTS) {
        fprintf(stderr, "unit.h: more than %d tests\n", UNIT_MAX_TESTS);
        exit(2);
    }
    unit_tests[unit_ntests].name = name;
    unit_tests[unit_ntests].fn = fn;
    unit_ntests++;
}

#define TEST(name)                                                        \
    static void test_##name(void);                                        \
    __attribute__((constructor)) static void unit_reg_##name(void)        \
    {                                                                     \
        unit_register(#name, test_##name);                                \
    }                                                                     \
    static void test_##name(void)

static void unit_fail(const char *file, int line, const char *expr, const char *detail)
{
    unit_failed_checks++;
    printf("FAIL %s: %s:%d: %s%s%s\n", unit_current, file, line, expr,
           detail[0] != '\0' ? " " : "", detail);
    fflush(stdout);
}

/* Each returns 1 when the check held. */
__attribute__((unused)) static int unit_check(int ok, const char *file, int line, const char *expr)
{
    if (!ok) {
        unit_fail(file, line, expr, "");
    }
    return ok;
}

static int unit_check_int(long long got, long long want, const char *file, int line,
                          const char *expr)
{
    if (got != want) {
        char d[96];
        snprintf(d, sizeof(d), "(got %lld, expected %lld)", got, want);
        unit_fail(file, line, expr, d);
        return 0;
    }
    return 1;
}

__attribute__((unused)) static int unit_check_str(const char *got, const char *want, const char *file, int line,
                          const char *expr)
{
    if (got == NULL || want == NULL || strcmp(got, want) != 0) {
        char d[256];
        snprintf(d, sizeof(d), "(got \"%.100s\", expected \"%.100s\")",
                 got != NULL ? got : "(null)", want != NULL ? want : "(null)");
        unit_fail(file, line, expr, d);
        return 0;
    }
    return 1;
}

#define CHECK(cond) unit_check((cond) ? 1 : 0, __FILE__, __LINE__, #cond)
#define CHECK_EQ_INT(got, want) \
    unit_check_int((long long)(got), (long long)(want), __FILE__, __LINE__, #got " == " #want)
#define CHECK_STR_EQ(got, want) \
    unit_check_str((got), (want), __FILE__, __LINE__, #got " == " #want)

#define REQUIRE(cond) do { if (!CHECK(cond)) return; } while (0)
#define REQUIRE_EQ_INT(got, want) do { if (!CHECK_EQ_INT(got, want)) return; } while (0)

/* Runs every registered test; returns the process exit status. */
static int unit_main(void)
{
    int passed = 0, failed = 0;
    for (int i = 0; i < unit_ntests; i++) {
        unit_current = unit_tests[i].name;
        unit_failed_checks = 0;
        unit_tests[i].fn();
        if (unit_failed_checks == 0) {
            printf("PASS %s\n", unit_current);
            passed++;
        } else {
            failed++;
        }
        fflush(stdout);
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed != 0 ? 1 : 0;
}

#endif
