/*
 * A private temporary directory for a unit test file: made by setup,
 * removed with everything in it by teardown. Header-only: each test
 * program includes it once.
 */
#ifndef BUSGATE_TEST_TMPDIR_H
#define BUSGATE_TEST_TMPDIR_H

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>

static char tmpdir[64];

/* Make /tmp/PREFIX.XXXXXX; 0 or -1. */
static int
tmpdir_make(const char *prefix)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/%s.XXXXXX", prefix);
    return mkdtemp(tmpdir) == NULL ? -1 : 0;
}

static int
tmpdir_remove_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    return remove(path);
}

/* Remove the directory and what it holds; 0 or -1. */
static int
tmpdir_remove(void)
{
    return nftw(tmpdir, tmpdir_remove_one, 8, FTW_DEPTH | FTW_PHYS);
}

/* tmpdir/name, in one of four rotating buffers (so a call may take two). */
static char *
tpath(const char *name)
{
    static char buf[4][256];
    static int n;
    char *p = buf[n++ % 4];

    snprintf(p, sizeof buf[0], "%s/%s", tmpdir, name);
    return p;
}

#endif /* BUSGATE_TEST_TMPDIR_H */
