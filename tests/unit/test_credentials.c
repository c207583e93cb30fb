/* Unit tests for src/credentials.c: the INI file, its errors with line
 * numbers, the mode rule, and the token file. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "credentials.h"

#include "tmpdir.h"

static char err[1024];

/* A file made with mkstemp, so it never exists with a wider mode. */
static char *
temp_file(const char *text, mode_t mode)
{
    static char path[256];
    int fd;

    snprintf(path, sizeof path, "%s/cred.XXXXXX", tmpdir);
    assert_true((fd = mkstemp(path)) >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    assert_int_equal(fchmod(fd, mode), 0);
    close(fd);
    return path;
}

static int
setup_dir(void **state)
{
    return tmpdir_make("test_credentials");
}

static int
teardown_dir(void **state)
{
    return tmpdir_remove();
}

/* want with each "%s" replaced by path. */
static void
expand(const char *want, const char *path, char *out, size_t n)
{
    const char *p;
    size_t used = 0;

    out[0] = '\0';
    while ((p = strstr(want, "%s")) != NULL) {
        used +=
            (size_t)snprintf(out + used, n - used, "%.*s%s", (int)(p - want), want, path);
        assert_true(used < n);
        want = p + 2;
    }
    snprintf(out + used, n - used, "%s", want);
}

/* want: the expected message, with %s for the file's path. */
static void
expect_load_error(const char *text, mode_t mode, const char *want)
{
    struct credentials cr;
    char *path = temp_file(text, mode), msg[1024];

    assert_int_equal(credentials_load(&cr, path, err, sizeof err), -1);
    expand(want, path, msg, sizeof msg);
    assert_string_equal(err, msg);
    assert_null(cr.username);
    assert_null(cr.password);
    assert_null(cr.token);
    unlink(path);
}

static void
test_load_basic(void **state)
{
    struct credentials cr;
    char *path = temp_file("# bus credentials\n"
                           "; another comment\n"
                           "\n"
                           "[bus]\n"
                           "username = gw\n"
                           "password =  p@ss ; not a comment # nor this\n"
                           "token=eyJhbGciOiJIUzI1NiJ9.e30.sig\n",
        0600);

    if (credentials_load(&cr, path, err, sizeof err) != 0)
        fail_msg("%s", err);
    assert_string_equal(cr.username, "gw");
    assert_string_equal(cr.password, "p@ss ; not a comment # nor this");
    assert_string_equal(cr.token, "eyJhbGciOiJIUzI1NiJ9.e30.sig");
    credentials_free(&cr);
    assert_null(cr.username);
    assert_null(cr.password);
    assert_null(cr.token);
    credentials_free(&cr);
    unlink(path);
}

static void
test_load_crlf_and_bom(void **state)
{
    struct credentials cr;
    char *path =
        temp_file("\xef\xbb\xbf[bus]\r\nusername = gw\r\npassword = gwpass\r\n", 0400);

    if (credentials_load(&cr, path, err, sizeof err) != 0)
        fail_msg("%s", err);
    assert_string_equal(cr.username, "gw");
    assert_string_equal(cr.password, "gwpass");
    assert_null(cr.token);
    credentials_free(&cr);
    unlink(path);
}

static void
test_errors(void **state)
{
    expect_load_error("[bus]\nusername = gw\npasswd = x\n", 0600,
        "%s:3: unknown key in [bus] (expected username, password or token)");
    expect_load_error("[bus]\nusername = gw\n[other]\nx = 1\n", 0600,
        "%s:4: unknown section (expected [bus])");
    expect_load_error("username = gw\n[bus]\npassword = x\n", 0600,
        "%s:1: a key outside a section (expected [bus] first)");
    expect_load_error("", 0600,
        "%s: no [bus] section with username and password, or token");
    expect_load_error("# nothing\n[bus]\n", 0600,
        "%s: no [bus] section with username and password, or token");
    expect_load_error("[bus]\nusername = gw\nthis line is not ini\n", 0600,
        "%s:3: syntax error (expected [bus], key = value or a comment starting with # or ;)");
    expect_load_error("[bus\nusername = gw\n", 0600,
        "%s:1: syntax error (expected [bus], key = value or a comment starting with # or ;)");
    expect_load_error("[bus]\nusername = gw\nusername = other\n", 0600,
        "%s:3: duplicate key 'username'");
    expect_load_error("[bus]\nusername = gw\npassword =\n", 0600,
        "%s:3: 'password' is empty");
    expect_load_error("[bus]\ntoken = abc def\n", 0600,
        "%s:2: 'token' contains white space or control characters");
    /* Continuation lines are not allowed: a secret must be on one line. */
    expect_load_error("[bus]\npassword = a\n  b\n", 0600,
        "%s:3: syntax error (expected [bus], key = value or a comment starting with # or ;)");
}

/* A secret typed where a name goes never reaches the message. */
static void
test_errors_never_show_a_secret(void **state)
{
    static const char *const files[] = {
        "[bus]\nusername = gw\nS3cretPa55 = \n",
        "[bus]\nusername = gw\nS3cretPa55 = S3cretPa55\n",
        "[S3cretPa55]\nusername = gw\n",
        "S3cretPa55 = x\n[bus]\n",
    };

    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        struct credentials cr;
        char *path = temp_file(files[i], 0600);

        assert_int_equal(credentials_load(&cr, path, err, sizeof err), -1);
        assert_non_null(strstr(err, path));
        if (strstr(err, "S3cret") != NULL || strstr(err, "Pa55") != NULL)
            fail_msg("secret in the error: %s", err);
        unlink(path);
    }
}

static void
test_mode_refused(void **state)
{
    expect_load_error("[bus]\nusername = gw\npassword = gwpass\n", 0644,
        "%s: mode 0644 lets group or others read or write it; it holds secrets: chmod 600 %s");
    expect_load_error("[bus]\nusername = gw\npassword = gwpass\n", 0640,
        "%s: mode 0640 lets group or others read or write it; it holds secrets: chmod 600 %s");
    expect_load_error("[bus]\nusername = gw\npassword = gwpass\n", 0602,
        "%s: mode 0602 lets group or others read or write it; it holds secrets: chmod 600 %s");
}

static void
test_check_mode(void **state)
{
    char *path = temp_file("x", 0600), want[512];

    assert_int_equal(credentials_check_mode(path, err, sizeof err), 0);
    assert_int_equal(chmod(path, 0400), 0);
    assert_int_equal(credentials_check_mode(path, err, sizeof err), 0);
    assert_int_equal(chmod(path, 0660), 0);
    assert_int_equal(credentials_check_mode(path, err, sizeof err), -1);
    snprintf(want, sizeof want,
        "%s: mode 0660 lets group or others read or write it; "
        "it holds secrets: chmod 600 %s",
        path, path);
    assert_string_equal(err, want);
    unlink(path);

    assert_int_equal(credentials_check_mode(path, err, sizeof err), -1);
    snprintf(want, sizeof want, "%s: No such file or directory", path);
    assert_string_equal(err, want);
    assert_int_equal(credentials_check_mode(tmpdir, err, sizeof err), -1);
    snprintf(want, sizeof want, "%s: not a regular file (a directory)", tmpdir);
    assert_string_equal(err, want);
}

static void
test_long_lines(void **state)
{
    struct credentials cr;
    size_t n = 12000;
    char *text = malloc(n + 64), *path, want[512];

    /* A long JWT fits on one line. */
    strcpy(text, "[bus]\ntoken = ");
    memset(text + strlen(text), 'a', n);
    strcpy(text + strlen("[bus]\ntoken = ") + n, "\n");
    path = temp_file(text, 0600);
    if (credentials_load(&cr, path, err, sizeof err) != 0)
        fail_msg("%s", err);
    assert_int_equal(strlen(cr.token), n);
    credentials_free(&cr);
    unlink(path);

    /* A line too long for the parser is refused, not split. */
    n = 20000;
    text = realloc(text, n + 64);
    strcpy(text, "[bus]\ntoken = ");
    memset(text + strlen(text), 'a', n);
    strcpy(text + strlen("[bus]\ntoken = ") + n, "\n");
    path = temp_file(text, 0600);
    assert_int_equal(credentials_load(&cr, path, err, sizeof err), -1);
    snprintf(want, sizeof want, "%s:2: line longer than 16381 bytes", path);
    assert_string_equal(err, want);
    assert_null(cr.token);
    unlink(path);

    /* So is a file over 64 KiB. */
    text = realloc(text, 70000);
    memset(text, '#', 69999);
    text[69999] = '\0';
    path = temp_file(text, 0600);
    assert_int_equal(credentials_load(&cr, path, err, sizeof err), -1);
    snprintf(want, sizeof want, "%s: larger than 65536 bytes", path);
    assert_string_equal(err, want);
    unlink(path);
    free(text);
}

static void
test_missing_file(void **state)
{
    struct credentials cr;
    char want[512];

    assert_int_equal(credentials_load(&cr, tpath("nope.ini"), err, sizeof err), -1);
    snprintf(want, sizeof want, "%s: No such file or directory", tpath("nope.ini"));
    assert_string_equal(err, want);
    assert_int_equal(credentials_load(&cr, tmpdir, err, sizeof err), -1);
    snprintf(want, sizeof want, "%s: not a regular file (a directory)", tmpdir);
    assert_string_equal(err, want);
}

static void
write_token(const char *path, const char *text, mode_t mode)
{
    FILE *f = fopen(path, "w");

    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    assert_int_equal(chmod(path, mode), 0);
}

static void
test_token_file(void **state)
{
    struct credentials cr = { 0 };
    char *path = tpath("token.jwt"), want[512];

    /* Surrounding white space is trimmed. */
    write_token(path, "  \n\teyJ0.first.sig \r\n\n", 0600);
    if (credentials_load_token_file(&cr, path, err, sizeof err) != 0)
        fail_msg("%s", err);
    assert_string_equal(cr.token, "eyJ0.first.sig");

    /* Re-read at reconnect: the new token replaces the old one. */
    write_token(path, "eyJ0.second.sig", 0600);
    if (credentials_load_token_file(&cr, path, err, sizeof err) != 0)
        fail_msg("%s", err);
    assert_string_equal(cr.token, "eyJ0.second.sig");

    /* A failed re-read keeps the previous token. */
    write_token(path, " \n ", 0600);
    assert_int_equal(credentials_load_token_file(&cr, path, err, sizeof err), -1);
    snprintf(want, sizeof want, "%s: empty token file", path);
    assert_string_equal(err, want);
    assert_string_equal(cr.token, "eyJ0.second.sig");

    write_token(path, "eyJ0.a.b\neyJ0.c.d\n", 0600);
    assert_int_equal(credentials_load_token_file(&cr, path, err, sizeof err), -1);
    snprintf(want, sizeof want,
        "%s: expected one token on one line (found white space or "
        "control characters inside it)",
        path);
    assert_string_equal(err, want);

    write_token(path, "eyJ0.a.b\n", 0644);
    assert_int_equal(credentials_load_token_file(&cr, path, err, sizeof err), -1);
    snprintf(want, sizeof want,
        "%s: mode 0644 lets group or others read or write it; "
        "it holds secrets: chmod 600 %s",
        path, path);
    assert_string_equal(err, want);

    credentials_free(&cr);
    assert_null(cr.token);
    unlink(path);
}

static void
test_token_file_nul(void **state)
{
    struct credentials cr = { 0 };
    char *path = tpath("token.jwt");
    FILE *f = fopen(path, "w");

    assert_non_null(f);
    fwrite("abc\0def\n", 1, 8, f);
    fclose(f);
    assert_int_equal(chmod(path, 0600), 0);
    assert_int_equal(credentials_load_token_file(&cr, path, err, sizeof err), -1);
    assert_null(cr.token);
    unlink(path);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_load_basic),
        cmocka_unit_test(test_load_crlf_and_bom),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_errors_never_show_a_secret),
        cmocka_unit_test(test_mode_refused),
        cmocka_unit_test(test_check_mode),
        cmocka_unit_test(test_long_lines),
        cmocka_unit_test(test_missing_file),
        cmocka_unit_test(test_token_file),
        cmocka_unit_test(test_token_file_nul),
    };

    return cmocka_run_group_tests(tests, setup_dir, teardown_dir);
}
