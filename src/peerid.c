/*
 * The peer identity cache (peerid.h). A few dozen local users at most: a
 * list is enough. Keyed by (uid, gid) since the gid SO_PEERCRED reports is
 * the process's, which getgrouplist adds to the list.
 */
#include <grp.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "peerid.h"

/* Supplementary groups kept per user; more are not looked at. */
#define PEERID_MAX_GROUPS 256

struct entry {
    struct entry *next;
    uid_t uid;
    gid_t gid;
    struct peerid_user user;
    char *name;
    gid_t *groups;
};

struct peerid {
    struct entry *head;
};

struct peerid *
peerid_new(void)
{
    struct peerid *p = calloc(1, sizeof *p);

    if (p == NULL)
        fatalx("out of memory (peer identities)");
    return p;
}

static struct entry *
entry_load(uid_t uid, gid_t gid)
{
    struct entry *e = calloc(1, sizeof *e);
    struct passwd *pw = getpwuid(uid);
    int n = PEERID_MAX_GROUPS;

    if (e == NULL || (e->groups = calloc(PEERID_MAX_GROUPS, sizeof(gid_t))) == NULL)
        fatalx("out of memory (peer identities)");
    e->uid = uid;
    e->gid = gid;
    if (pw != NULL) {
        e->name = strdup(pw->pw_name);
        if (getgrouplist(pw->pw_name, gid, e->groups, &n) < 0)
            n = PEERID_MAX_GROUPS; /* truncated: the first ones count */
    } else {
        if (asprintf(&e->name, "#%u", (unsigned)uid) < 0)
            e->name = NULL;
        e->groups[0] = gid;
        n = 1;
    }
    if (e->name == NULL)
        fatalx("out of memory (peer identities)");
    e->user.name = e->name;
    e->user.groups = e->groups;
    e->user.n_groups = (size_t)n;
    return e;
}

const struct peerid_user *
peerid_lookup(struct peerid *p, uid_t uid, gid_t gid)
{
    struct entry *e;

    for (e = p->head; e != NULL; e = e->next)
        if (e->uid == uid && e->gid == gid)
            return &e->user;
    e = entry_load(uid, gid);
    e->next = p->head;
    p->head = e;
    return &e->user;
}

void
peerid_flush(struct peerid *p)
{
    struct entry *e;

    while ((e = p->head) != NULL) {
        p->head = e->next;
        free(e->name);
        free(e->groups);
        free(e);
    }
}

void
peerid_free(struct peerid *p)
{
    if (p == NULL)
        return;
    peerid_flush(p);
    free(p);
}
