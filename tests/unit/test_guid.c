/*
 * Guid text <-> .NET wire bytes: the example in the golden vectors file,
 * round trips, and refusal of anything but canonical text.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "guid.h"

static const char *example_uuid = "33221100-5544-7766-8899-aabbccddeeff";
static const uint8_t example_wire[GUID_WIRE_LEN] = { 0x00, 0x11, 0x22, 0x33, 0x44, 0x55,
    0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff };

static char *
read_vectors(void)
{
    const char *top = getenv("top_srcdir");
    char path[4096];
    FILE *f;
    char *buf;
    long len;

    snprintf(path, sizeof path, "%s/tests/vectors/wire-v3.json", top != NULL ? top : ".");
    if ((f = fopen(path, "rb")) == NULL &&
        (f = fopen("tests/vectors/wire-v3.json", "rb")) == NULL)
        return NULL;
    fseek(f, 0, SEEK_END);
    len = ftell(f);
    rewind(f);
    buf = malloc((size_t)len + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)len, f), (size_t)len);
    buf[len] = '\0';
    fclose(f);
    return buf;
}

/*
 * The string value of key inside the "guid_example" object: the object is
 * flat, so its members lie between its braces.
 */
static char *
example_value(const char *json, const char *key)
{
    const char *obj = strstr(json, "\"guid_example\"");
    const char *end, *p, *q;
    char pattern[64];
    char *out;

    assert_non_null(obj);
    assert_non_null(obj = strchr(obj, '{'));
    assert_non_null(end = strchr(obj, '}'));
    snprintf(pattern, sizeof pattern, "\"%s\"", key);
    assert_non_null(p = strstr(obj, pattern));
    assert_true(p < end);
    p += strlen(pattern);
    while (*p == ' ' || *p == ':' || *p == '\n')
        p++;
    assert_int_equal(*p, '"');
    p++;
    assert_non_null(q = strchr(p, '"'));
    out = strndup(p, (size_t)(q - p));
    assert_non_null(out);
    return out;
}

static void
unhex16(const char *hex, uint8_t out[GUID_WIRE_LEN])
{
    assert_int_equal(strlen(hex), 2 * GUID_WIRE_LEN);
    for (int i = 0; i < GUID_WIRE_LEN; i++) {
        unsigned v;

        assert_int_equal(sscanf(hex + 2 * i, "%2x", &v), 1);
        out[i] = (uint8_t)v;
    }
}

static void
test_vectors_example(void **state)
{
    char *json = read_vectors();
    char *uuid, *wire_hex;
    char text[GUID_TEXT_LEN + 1];
    uint8_t want[GUID_WIRE_LEN], got[GUID_WIRE_LEN];

    assert_non_null(json);
    uuid = example_value(json, "uuid");
    wire_hex = example_value(json, "wire_hex");
    unhex16(wire_hex, want);
    guid_to_text(want, text);
    assert_string_equal(text, uuid);
    assert_int_equal(guid_from_text(uuid, strlen(uuid), got), 0);
    assert_memory_equal(got, want, GUID_WIRE_LEN);
    /* The file agrees with the example written down here. */
    assert_string_equal(uuid, example_uuid);
    assert_memory_equal(want, example_wire, GUID_WIRE_LEN);
    free(uuid);
    free(wire_hex);
    free(json);
}

/* BUS-PROTOCOL.md's own example. */
static void
test_protocol_example(void **state)
{
    static const uint8_t wire[GUID_WIRE_LEN] = { 0x33, 0x22, 0x11, 0x00, 0x55, 0x44, 0x77,
        0x66, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff };
    const char *text = "00112233-4455-6677-8899-aabbccddeeff";
    char out[GUID_TEXT_LEN + 1];
    uint8_t got[GUID_WIRE_LEN];

    guid_to_text(wire, out);
    assert_string_equal(out, text);
    assert_int_equal(guid_from_text(text, GUID_TEXT_LEN, got), 0);
    assert_memory_equal(got, wire, GUID_WIRE_LEN);
}

static void
test_upper_case(void **state)
{
    uint8_t got[GUID_WIRE_LEN];
    char out[GUID_TEXT_LEN + 1];

    assert_int_equal(guid_from_text("33221100-5544-7766-8899-AABBCCDDEEFF", GUID_TEXT_LEN,
                         got),
        0);
    assert_memory_equal(got, example_wire, GUID_WIRE_LEN);
    assert_int_equal(guid_from_text("33221100-5544-7766-8899-AaBbCcDdEeFf", GUID_TEXT_LEN,
                         got),
        0);
    assert_memory_equal(got, example_wire, GUID_WIRE_LEN);
    guid_to_text(got, out);
    assert_string_equal(out, example_uuid); /* always lower case */
}

/* Many byte patterns survive wire -> text -> wire, and text is canonical. */
static void
test_round_trips(void **state)
{
    uint32_t x = 0x9e3779b9u;

    for (int n = 0; n < 5000; n++) {
        uint8_t wire[GUID_WIRE_LEN], back[GUID_WIRE_LEN];
        char text[GUID_TEXT_LEN + 1];

        for (int i = 0; i < GUID_WIRE_LEN; i++) {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            wire[i] = n == 0 ? 0 : n == 1 ? 0xff : (uint8_t)x;
        }
        guid_to_text(wire, text);
        assert_int_equal(strlen(text), GUID_TEXT_LEN);
        for (int i = 0; i < GUID_TEXT_LEN; i++) {
            if (i == 8 || i == 13 || i == 18 || i == 23)
                assert_int_equal(text[i], '-');
            else
                assert_non_null(strchr("0123456789abcdef", text[i]));
        }
        assert_int_equal(guid_from_text(text, GUID_TEXT_LEN, back), 0);
        assert_memory_equal(back, wire, GUID_WIRE_LEN);
    }
}

static void
expect_bad(const char *text, size_t len)
{
    uint8_t out[GUID_WIRE_LEN];

    memset(out, 0x5a, sizeof out);
    if (guid_from_text(text, len, out) != -1) {
        fprintf(stderr, "accepted \"%.*s\"\n", (int)len, text ? text : "");
        fail();
    }
    for (int i = 0; i < GUID_WIRE_LEN; i++)
        assert_int_equal(out[i], 0x5a); /* untouched on failure */
}

static void
test_rejects(void **state)
{
    static const char *const bad[] = {
        "",
        "33221100-5544-7766-8899-aabbccddeef",   /* 35 */
        "33221100-5544-7766-8899-aabbccddeeff0", /* 37 */
        "33221100554477668899aabbccddeeff",      /* no dashes */
        "{33221100-5544-7766-8899-aabbccddee}",  /* braces */
        "33221100-5544-7766-8899-aabbccddeefg",  /* bad hex */
        "3322110x-5544-7766-8899-aabbccddeeff",
        "33221100-5544-7766-8899-aabbccddee f",
        "33221100-5544-7766-8899-+abbccddeeff",
        "33221100-5544-7766-8899-aabbccddee\xff"
        "f",
        "332211005-544-7766-8899-aabbccddeeff", /* dashes misplaced */
        "33221100-55447-766-8899-aabbccddeeff",
        "33221100-5544-77668-899-aabbccddeeff",
        "33221100-5544-7766-88998aabbccddeef-",
        "33221100_5544_7766_8899_aabbccddeeff",
        "-33221100-5544-7766-8899-aabbccddeef",
        "33221100-5544-7766-8899-aabb-ccddeef",
        "33221100--544-7766-8899-aabbccddeeff",
    };

    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        expect_bad(bad[i], strlen(bad[i]));
    /* Length is what counts, not a NUL. */
    expect_bad(example_uuid, GUID_TEXT_LEN - 1);
    expect_bad(example_uuid, GUID_TEXT_LEN + 1);
    expect_bad("33221100-5544-7766-8899-aabbcc\0deeff", GUID_TEXT_LEN);
    expect_bad(NULL, GUID_TEXT_LEN);
    {
        /* Exactly 36 of len, followed by more text, is accepted. */
        uint8_t out[GUID_WIRE_LEN];
        const char *longer = "33221100-5544-7766-8899-aabbccddeeff trailing";

        assert_int_equal(guid_from_text(longer, GUID_TEXT_LEN, out), 0);
        assert_memory_equal(out, example_wire, GUID_WIRE_LEN);
    }
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_vectors_example),
        cmocka_unit_test(test_protocol_example),
        cmocka_unit_test(test_upper_case),
        cmocka_unit_test(test_round_trips),
        cmocka_unit_test(test_rejects),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
