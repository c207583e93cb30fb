/*
 * Guids in .NET Guid.ToByteArray order: the first three groups of the
 * canonical text are stored little-endian, the last two as written.
 */
#include "guid.h"
#include "util.h"

#include <stdbool.h>

/* Wire byte shown at each hex pair of the text, in text order. */
static const uint8_t guid_text_order[GUID_WIRE_LEN] = {
    3,
    2,
    1,
    0,
    5,
    4,
    7,
    6,
    8,
    9,
    10,
    11,
    12,
    13,
    14,
    15,
};

/* Dashes follow these hex pairs (0-based, in text order). */
static bool
guid_dash_after(int pair)
{
    return pair == 3 || pair == 5 || pair == 7 || pair == 9;
}

void
guid_to_text(const uint8_t wire[GUID_WIRE_LEN], char out[GUID_TEXT_LEN + 1])
{
    static const char hex[] = "0123456789abcdef";
    char *p = out;

    for (int i = 0; i < GUID_WIRE_LEN; i++) {
        uint8_t b = wire[guid_text_order[i]];

        *p++ = hex[b >> 4];
        *p++ = hex[b & 0x0f];
        if (guid_dash_after(i))
            *p++ = '-';
    }
    *p = '\0';
}

int
guid_from_text(const char *text, size_t len, uint8_t wire[GUID_WIRE_LEN])
{
    uint8_t out[GUID_WIRE_LEN];
    const char *p = text;

    if (text == NULL || len != GUID_TEXT_LEN)
        return -1;
    for (int i = 0; i < GUID_WIRE_LEN; i++) {
        int hi = hex_value((unsigned char)p[0]), lo = hex_value((unsigned char)p[1]);

        if (hi < 0 || lo < 0)
            return -1;
        out[guid_text_order[i]] = (uint8_t)(hi << 4 | lo);
        p += 2;
        if (guid_dash_after(i) && *p++ != '-')
            return -1;
    }
    /* Write only on success, so a failed parse leaves wire untouched. */
    for (int i = 0; i < GUID_WIRE_LEN; i++)
        wire[i] = out[i];
    return 0;
}
