/*
 * The bus credentials: a small INI file read with inih, and an optional
 * token file. We read each file ourselves into a buffer we wipe, feed inih
 * line by line from it (so we know the line number of every key and can
 * bound line lengths), and copy the values we keep. Secrets never appear
 * in messages: errors name the file, the line and (for a known key) the
 * key, never a value nor a name we did not expect.
 *
 * inih here is Debian's build, whose options are run-time variables; we
 * set the ones that matter before each parse (see cred_ini_options).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <ini.h>

#include "credentials.h"
#include "fileio.h"
#include "util.h"

/* A credentials or token file is a few lines; refuse anything bigger. */
#define CRED_MAX_FILE (64 * 1024)
/* Longest line inih will see: a long JWT fits. */
#define CRED_MAX_LINE 16384

/* Feeds inih one line at a time from our own buffer. */
struct cred_reader {
    const char *buf;
    size_t len, pos;
    int lineno;   /* line last handed to inih */
    int too_long; /* line number of an over-long line, 0 if none */
};

/* State while parsing one credentials file. */
struct cred_parse {
    const char *path;
    struct credentials *cr;
    struct cred_reader *rd;
    char *err;
    size_t errlen;
    bool failed; /* err holds the first error */
    bool any;    /* a key was seen in [bus] */
};

static void
wipe_free(char *s)
{
    if (s != NULL) {
        explicit_bzero(s, strlen(s));
        free(s);
    }
}

void
credentials_free(struct credentials *cr)
{
    wipe_free(cr->username);
    wipe_free(cr->password);
    wipe_free(cr->token);
    cr->username = cr->password = cr->token = NULL;
}

/* The mode rule on an already stat'ed file. */
static int
check_stat(const char *path, const struct stat *st, char *err, size_t errlen)
{
    if (fileio_check_type(path, st, false, err, errlen) != 0)
        return -1;
    if (st->st_mode & 077) {
        set_err(err, errlen,
            "%s: mode %04o lets group or others read or write it; "
            "it holds secrets: chmod 600 %s",
            path, (unsigned)(st->st_mode & 07777), path);
        return -1;
    }
    return 0;
}

int
credentials_check_mode(const char *path, char *err, size_t errlen)
{
    struct stat st;

    if (stat(path, &st) != 0) {
        set_err(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    return check_stat(path, &st, err, errlen);
}

/* Read a whole secret file into a NUL-terminated buffer, checking its mode
 * on the open descriptor so the file checked is the file read. */
static int
read_secret(const char *path, char **out, size_t *outlen, char *err, size_t errlen)
{
    struct stat st;
    int fd;

    if ((fd = fileio_open(path, false, &st, err, errlen)) < 0)
        return -1;
    if (check_stat(path, &st, err, errlen) != 0) {
        close(fd);
        return -1;
    }
    return fileio_read_all(fd, path, CRED_MAX_FILE, out, outlen, err, errlen);
}

static void
wipe_buffer(char *buf, size_t len)
{
    explicit_bzero(buf, len);
    free(buf);
}

/* inih's fgets-like reader over our buffer. A line that does not fit in
 * num - 1 bytes stops the parse instead of being split. */
static char *
cred_read_line(char *str, int num, void *stream)
{
    struct cred_reader *rd = stream;
    const char *start = rd->buf + rd->pos, *nl;
    size_t left = rd->len - rd->pos, n;

    if (left == 0 || rd->too_long != 0)
        return NULL;
    nl = memchr(start, '\n', left);
    n = nl != NULL ? (size_t)(nl - start) + 1 : left;
    rd->lineno++;
    if (num <= 0 || n > (size_t)num - 1) {
        rd->too_long = rd->lineno;
        return NULL;
    }
    memcpy(str, start, n);
    str[n] = '\0';
    rd->pos += n;
    return str;
}

static int __attribute__((format(printf, 2, 3)))
cred_fail(struct cred_parse *p, const char *fmt, ...)
{
    char msg[256];
    va_list ap;

    if (!p->failed) {
        va_start(ap, fmt);
        vsnprintf(msg, sizeof msg, fmt, ap);
        va_end(ap);
        set_err(p->err, p->errlen, "%s:%d: %s", p->path, p->rd->lineno, msg);
        p->failed = true;
    }
    return 0;
}

static bool
has_space_or_control(const char *s)
{
    for (; *s != '\0'; s++)
        if ((unsigned char)*s <= 0x20 || *s == 0x7f)
            return true;
    return false;
}

static int
cred_handler(void *user, const char *section, const char *name, const char *value)
{
    struct cred_parse *p = user;
    char **slot;

    /* A name we do not know may be a secret typed in the wrong place (a
     * password on a line of its own, with '='): it is never shown, only
     * the file and line are. */
    if (strcmp(section, "bus") != 0)
        return section[0] == '\0'
            ? cred_fail(p, "a key outside a section (expected [bus] first)")
            : cred_fail(p, "unknown section (expected [bus])");
    if (strcmp(name, "username") == 0)
        slot = &p->cr->username;
    else if (strcmp(name, "password") == 0)
        slot = &p->cr->password;
    else if (strcmp(name, "token") == 0)
        slot = &p->cr->token;
    else
        return cred_fail(p, "unknown key in [bus] (expected username, password or token)");
    if (*slot != NULL)
        return cred_fail(p, "duplicate key '%s'", name);
    if (value[0] == '\0')
        return cred_fail(p, "'%s' is empty", name);
    if (slot == &p->cr->token && has_space_or_control(value))
        return cred_fail(p, "'%s' contains white space or control characters", name);
    if ((*slot = strdup(value)) == NULL)
        return cred_fail(p, "out of memory");
    p->any = true;
    return 1;
}

/* Our choices for inih's run-time options: no inline comments (a password
 * may contain " ;"), no continuation lines, long lines, stop at the first
 * error, line buffer on the stack (not a heap block we could not wipe). */
static void
cred_ini_options(void)
{
    ini_allow_inline_comments = false;
    ini_allow_multiline = false;
    ini_allow_no_value = false;
    ini_stop_on_first_error = true;
    ini_use_stack = true;
    ini_max_line = CRED_MAX_LINE;
}

/* Overwrite the stack below us, where inih's line buffer (holding secrets)
 * lived; noinline so the array lands where inih's frame was. */
static void __attribute__((noinline)) cred_burn_stack(void)
{
    char pad[CRED_MAX_LINE + 2048];

    explicit_bzero(pad, sizeof pad);
    __asm__ volatile("" : : "r"(pad) : "memory");
}

static int __attribute__((noinline))
cred_parse_buffer(struct cred_parse *p, struct cred_reader *rd)
{
    cred_ini_options();
    return ini_parse_stream(cred_read_line, rd, cred_handler, p);
}

/* Parse buf into p->cr; 0 or -1 with p->err. */
static int
cred_parse(struct cred_parse *p, struct cred_reader *rd)
{
    int r = cred_parse_buffer(p, rd);

    cred_burn_stack();
    if (rd->too_long != 0) {
        set_err(p->err, p->errlen, "%s:%d: line longer than %d bytes", p->path,
            rd->too_long, CRED_MAX_LINE - 3);
        return -1;
    }
    if (p->failed)
        return -1;
    if (r != 0) {
        set_err(p->err, p->errlen,
            "%s:%d: syntax error (expected [bus], key = value "
            "or a comment starting with # or ;)",
            p->path, r);
        return -1;
    }
    if (!p->any) {
        set_err(p->err, p->errlen,
            "%s: no [bus] section with username and password, "
            "or token",
            p->path);
        return -1;
    }
    return 0;
}

int
credentials_load(struct credentials *cr, const char *path, char *err, size_t errlen)
{
    struct cred_reader rd = { 0 };
    struct cred_parse p = { 0 };
    char *buf;
    size_t len;
    int r;

    memset(cr, 0, sizeof *cr);
    if (read_secret(path, &buf, &len, err, errlen) != 0)
        return -1;
    rd.buf = buf;
    rd.len = len;
    p.path = path;
    p.cr = cr;
    p.rd = &rd;
    p.err = err;
    p.errlen = errlen;
    if ((r = cred_parse(&p, &rd)) != 0)
        credentials_free(cr);
    wipe_buffer(buf, len);
    return r;
}

int
credentials_load_token_file(struct credentials *cr, const char *path, char *err,
    size_t errlen)
{
    char *buf, *start, *end, *token;
    size_t len;

    if (read_secret(path, &buf, &len, err, errlen) != 0)
        return -1;
    start = buf;
    end = buf + len;
    while (start < end &&
        (*start == ' ' || *start == '\t' || *start == '\n' || *start == '\r'))
        start++;
    while (end > start &&
        (end[-1] == ' ' || end[-1] == '\t' || end[-1] == '\n' || end[-1] == '\r'))
        end--;
    *end = '\0';
    if (start == end || strlen(start) != (size_t)(end - start) ||
        has_space_or_control(start)) {
        set_err(err, errlen,
            start == end
                ? "%s: empty token file"
                : "%s: expected one token on one line (found white space or control characters "
                  "inside it)",
            path);
        wipe_buffer(buf, len);
        return -1;
    }
    if ((token = strdup(start)) == NULL) {
        set_err(err, errlen, "%s: out of memory", path);
        wipe_buffer(buf, len);
        return -1;
    }
    wipe_free(cr->token);
    cr->token = token;
    wipe_buffer(buf, len);
    return 0;
}
