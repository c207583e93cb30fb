/*
 * Who a local peer is, beyond what SO_PEERCRED says: the user's name and
 * supplementary groups from the user database (getpwuid, getgrouplist),
 * cached per uid because those lookups may block (NSS) and run on the
 * event loop at each accept. The cache is emptied at reload, so group
 * changes apply to live sessions then.
 */
#ifndef BUSGATE_PEERID_H
#define BUSGATE_PEERID_H

#include <stddef.h>
#include <sys/types.h>

struct peerid;

/* What is known of one uid. groups holds the primary gid too. */
struct peerid_user {
    const char *name; /* "#1234" when the database has no entry */
    const gid_t *groups;
    size_t n_groups;
};

struct peerid *peerid_new(void);
void peerid_free(struct peerid *p);
/* The user uid (primary group gid as SO_PEERCRED said), from the cache or
 * the database. Valid until peerid_flush or peerid_free. */
const struct peerid_user *peerid_lookup(struct peerid *p, uid_t uid, gid_t gid);
void peerid_flush(struct peerid *p);

#endif /* BUSGATE_PEERID_H */
