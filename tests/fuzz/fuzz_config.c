/*
 * libFuzzer target for the config loader: arbitrary bytes as a YAML file.
 *
 * Checks, beyond "no crash, no leak, no UB":
 *  - a refusal always says where: "fuzz.yaml:" then a line and column
 *    (or a file-level reason), and is NUL-terminated within the buffer;
 *  - an accepted config dumps to YAML that loads again and dumps to the
 *    same text (the dump is a fixed point), but for the access rules'
 *    "(line N)" comments, which say where each rule was read.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "fuzz.h"

static char *
dump(const struct config *cfg, size_t *len)
{
    char *buf = NULL;
    FILE *f = open_memstream(&buf, len);

    CHECK(f != NULL);
    config_dump(cfg, f);
    CHECK(fclose(f) == 0);
    return buf;
}

/* The dump without the line numbers of "(line N)": a rule reloaded from
 * a dump was read at another line of it. */
static void
without_lines(char *d, size_t *len)
{
    static const char mark[] = "(line ";
    size_t in = 0, out = 0;

    while (in < *len) {
        if (*len - in > sizeof(mark) - 1 && memcmp(d + in, mark, sizeof(mark) - 1) == 0) {
            in += sizeof(mark) - 1;
            while (in < *len && d[in] >= '0' && d[in] <= '9')
                in++;
            continue;
        }
        d[out++] = d[in++];
    }
    *len = out;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct config a, b;
    char err[512], *d1, *d2;
    size_t l1, l2;

    memset(err, 'x', sizeof err);
    if (config_load_string(&a, "fuzz.yaml", (const char *)data, size, err, sizeof err) !=
        0) {
        CHECK(memchr(err, '\0', sizeof err) != NULL);
        CHECK(strncmp(err, "fuzz.yaml:", 10) == 0);
        CHECK(a.path == NULL && a.bus.host == NULL && a.listen.path == NULL);
        config_free(&a);
        return 0;
    }
    d1 = dump(&a, &l1);
    if (config_load_string(&b, "fuzz.yaml", d1, l1, err, sizeof err) != 0) {
        fprintf(stderr, "dump does not load: %s\n%s", err, d1);
        abort();
    }
    d2 = dump(&b, &l2);
    without_lines(d1, &l1);
    without_lines(d2, &l2);
    CHECK(l1 == l2 && memcmp(d1, d2, l1) == 0);
    free(d1);
    free(d2);
    config_free(&a);
    config_free(&b);
    return 0;
}
