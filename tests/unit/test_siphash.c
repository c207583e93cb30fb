/*
 * SipHash: the paper's test vectors for SipHash-2-4 (the code 1-3 shares
 * but for its rounds), and keys that are random and change the hash.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "siphash.h"

/* The paper's key: bytes 00 01 .. 0f, as two little-endian words. */
static const struct siphash_key paper_key = { 0x0706050403020100ull,
    0x0f0e0d0c0b0a0908ull };

static void
test_paper_vectors(void **state)
{
    uint8_t msg[15];

    (void)state;
    for (int i = 0; i < 15; i++)
        msg[i] = (uint8_t)i;
    /* Appendix A: the 15 bytes 00 .. 0e. */
    assert_true(siphash24(&paper_key, msg, 15) == 0xa129ca6149be45e5ull);
    /* The reference code's first vector: the empty message. */
    assert_true(siphash24(&paper_key, msg, 0) == 0x726fdb47dd0e0e31ull);
}

static void
test_rounds_and_key_matter(void **state)
{
    const struct siphash_key other = { paper_key.k0 ^ 1, paper_key.k1 };
    const char *topic = "prices.equity.VOD";

    (void)state;
    assert_true(siphash13(&paper_key, topic, strlen(topic)) !=
        siphash24(&paper_key, topic, strlen(topic)));
    assert_true(siphash13(&paper_key, topic, strlen(topic)) !=
        siphash13(&other, topic, strlen(topic)));
    /* The length is hashed: a key and its prefix padded with NULs differ. */
    assert_true(siphash13(&paper_key, "ab\0", 3) != siphash13(&paper_key, "ab", 2));
}

static void
test_random_keys_differ(void **state)
{
    struct siphash_key a, b;

    (void)state;
    assert_int_equal(siphash_key_random(&a), 0);
    assert_int_equal(siphash_key_random(&b), 0);
    assert_false(a.k0 == b.k0 && a.k1 == b.k1);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_paper_vectors),
        cmocka_unit_test(test_rounds_and_key_matter),
        cmocka_unit_test(test_random_keys_differ),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
