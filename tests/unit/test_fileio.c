/* Unit tests for src/fileio.c: what may be read (regular files, or
 * directories when asked), a FIFO refused without blocking, the size bound. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cmocka.h>

#include "fileio.h"

#include "tmpdir.h"

static char err[512];

static void
write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");

    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void
expect_err(const char *path, const char *reason)
{
    char want[512];

    snprintf(want, sizeof want, "%s: %s", path, reason);
    assert_string_equal(err, want);
}

static void
t_regular_file_read(void **state)
{
    struct stat st;
    char *buf;
    size_t len;
    int fd;

    write_file(tpath("a.txt"), "hello\n");
    assert_true((fd = fileio_open(tpath("a.txt"), false, &st, err, sizeof err)) >= 0);
    assert_true(S_ISREG(st.st_mode));
    assert_int_equal(fileio_read_all(fd, tpath("a.txt"), 6, &buf, &len, err, sizeof err),
        0);
    assert_int_equal(len, 6);
    assert_string_equal(buf, "hello\n");
    free(buf);
    assert_int_equal(fileio_check(tpath("a.txt"), false, err, sizeof err), 0);
}

static void
t_too_large(void **state)
{
    struct stat st;
    char *buf = NULL;
    size_t len;
    int fd;

    write_file(tpath("b.txt"), "1234567");
    assert_true((fd = fileio_open(tpath("b.txt"), false, &st, err, sizeof err)) >= 0);
    assert_int_equal(fileio_read_all(fd, tpath("b.txt"), 6, &buf, &len, err, sizeof err),
        -1);
    assert_null(buf);
    expect_err(tpath("b.txt"), "larger than 6 bytes");
}

/* A FIFO with no writer: opening it must not wait for one. */
static void
t_fifo_refused(void **state)
{
    struct stat st;

    assert_int_equal(mkfifo(tpath("fifo"), 0600), 0);
    alarm(5); /* a blocking open fails the test instead of hanging it */
    assert_int_equal(fileio_open(tpath("fifo"), false, &st, err, sizeof err), -1);
    expect_err(tpath("fifo"), "not a regular file (a FIFO)");
    assert_int_equal(fileio_check(tpath("fifo"), false, err, sizeof err), -1);
    expect_err(tpath("fifo"), "not a regular file (a FIFO)");
    assert_int_equal(fileio_check(tpath("fifo"), true, err, sizeof err), -1);
    alarm(0);
}

static void
t_other_kinds(void **state)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    int s;

    assert_int_equal(fileio_check(tmpdir, false, err, sizeof err), -1);
    expect_err(tmpdir, "not a regular file (a directory)");
    assert_int_equal(fileio_check(tmpdir, true, err, sizeof err), 0);
    assert_int_equal(fileio_check("/dev/null", false, err, sizeof err), -1);
    expect_err("/dev/null", "not a regular file (a character device)");
    assert_int_equal(fileio_check(tpath("none"), false, err, sizeof err), -1);
    expect_err(tpath("none"), "No such file or directory");

    /* A socket cannot even be opened: the open's own reason is given. */
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", tpath("sock"));
    assert_true((s = socket(AF_UNIX, SOCK_STREAM, 0)) >= 0);
    assert_int_equal(bind(s, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(fileio_check(tpath("sock"), false, err, sizeof err), -1);
    assert_non_null(strstr(err, tpath("sock")));
    close(s);
}

static int
setup(void **state)
{
    return tmpdir_make("test_fileio");
}

static int
teardown(void **state)
{
    return tmpdir_remove();
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(t_regular_file_read),
        cmocka_unit_test(t_too_large),
        cmocka_unit_test(t_fifo_refused),
        cmocka_unit_test(t_other_kinds),
    };

    return cmocka_run_group_tests(tests, setup, teardown);
}
