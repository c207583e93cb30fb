/*
 * Guids: the 16 wire bytes (.NET Guid.ToByteArray order) to and from the
 * canonical text form shown to people ("00112233-4455-6677-8899-aabbccddeeff").
 */
#ifndef BUSGATE_GUID_H
#define BUSGATE_GUID_H

#include <stddef.h>
#include <stdint.h>

#define GUID_WIRE_LEN 16
#define GUID_TEXT_LEN 36 /* without the terminating NUL */

/* Write the canonical lower-case text of wire bytes into out (37 bytes). */
void guid_to_text(const uint8_t wire[GUID_WIRE_LEN], char out[GUID_TEXT_LEN + 1]);

/* Parse canonical text (either case, exactly 36 chars of len) into wire
 * bytes. Returns 0, or -1 if text is not a canonical Guid. */
int guid_from_text(const char *text, size_t len, uint8_t wire[GUID_WIRE_LEN]);

#endif /* BUSGATE_GUID_H */
