/*
 * busgate stats (text, JSON or Prometheus from the daemon's STAT lines,
 * through the same snapshot formatter) and busgate sessions.
 */
#include <event2/buffer.h>

#include "busgate-int.h"
#include "statsfmt.h"

/* One line of STATS SESSIONS, kept with its queued bytes for sorting. */
struct session_row {
    char *line;
    uint64_t queued;
};

struct session_table {
    struct session_row *rows;
    size_t n, cap;
};

/* STATS [view]: each STAT line's name and value to line(). */
static void
stats_lines(struct cli *c, const char *view, bg_stat_callback *line, void *arg)
{
    int r;

    if ((r = bg_stats(c->bg, view, line, arg)) < 0)
        cli_bg_fail(c, r);
}

static void
print_line(const char *name, const char *value, void *arg)
{
    printf("%s%s%s\n", name, value[0] ? " " : "", value);
}

/* A STAT line into the snapshot. */
static void
snapshot_line(const char *name, const char *value, void *arg)
{
    if (statsfmt_line(arg, name, value) != 0)
        cli_fail(EXIT_NODAEMON, "out of memory");
}

static void
write_buffer(struct evbuffer *b)
{
    size_t n = evbuffer_get_length(b);

    if (n > 0 && fwrite(evbuffer_pullup(b, -1), 1, n, stdout) != n)
        cli_fail(EXIT_NODAEMON, "cannot write the output");
}

/* The same snapshot the daemon's /metrics renders, from the STAT lines. */
void
cli_run_stats(struct cli *c, enum stats_format format)
{
    struct statsfmt *sf;
    struct evbuffer *out;

    if (format == STATS_TEXT) {
        stats_lines(c, NULL, print_line, NULL);
        cli_finish(EXIT_DONE);
    }
    if ((sf = statsfmt_new()) == NULL || (out = evbuffer_new()) == NULL)
        cli_fail(EXIT_NODAEMON, "out of memory");
    stats_lines(c, NULL, snapshot_line, sf);
    if (format == STATS_JSON)
        statsfmt_render_json(sf, out);
    else
        statsfmt_render_prometheus(sf, out);
    write_buffer(out);
    evbuffer_free(out);
    statsfmt_free(sf);
    cli_finish(EXIT_DONE);
}

static void
session_row(const char *name, const char *rest, void *arg)
{
    struct session_table *t = arg;
    const char *q = strstr(rest, " queued=");

    if (strcmp(name, "session") != 0)
        return;
    if (t->n == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 16;
        struct session_row *p = realloc(t->rows, cap * sizeof *p);

        if (p == NULL)
            cli_fail(EXIT_NODAEMON, "out of memory");
        t->rows = p;
        t->cap = cap;
    }
    if ((t->rows[t->n].line = strdup(rest)) == NULL)
        cli_fail(EXIT_NODAEMON, "out of memory");
    t->rows[t->n++].queued = q != NULL ? strtoull(q + 8, NULL, 10) : 0;
}

static int
by_queued(const void *a, const void *b)
{
    const struct session_row *x = a, *y = b;

    return x->queued < y->queued ? 1 : x->queued > y->queued ? -1 : 0;
}

/* `busgate sessions`: STATS SESSIONS as a table, the most queued first. */
void
cli_run_sessions(struct cli *c)
{
    static const char *const cols[] = { "pid", "uid", "app", "age", "idle", "subs",
        "msgs_in", "bytes_in", "msgs_out", "bytes_out", "queued", "state" };
    struct session_table t = { NULL, 0, 0 };

    stats_lines(c, "SESSIONS", session_row, &t);
    qsort(t.rows, t.n, sizeof *t.rows, by_queued);
    printf("%-6s", "id");
    for (size_t i = 0; i < sizeof cols / sizeof cols[0]; i++)
        printf(" %10s", cols[i]);
    printf("\n");
    for (size_t r = 0; r < t.n; r++) {
        char *save = NULL, *w = strtok_r(t.rows[r].line, " ", &save);

        printf("%-6s", w != NULL ? w : "?");
        while ((w = strtok_r(NULL, " ", &save)) != NULL) {
            char *eq = strchr(w, '=');

            printf(" %10s", eq != NULL ? eq + 1 : w);
        }
        printf("\n");
        free(t.rows[r].line);
    }
    free(t.rows);
    cli_finish(EXIT_DONE);
}
