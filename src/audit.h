/*
 * Permissive settings an operator should hear about: each is allowed (a
 * lab or a test may want it) but weakens the daemon's security, so it is
 * said in --check-config and at start. Checks the configuration and the
 * files and directories it names; changes nothing.
 */
#ifndef BUSGATE_AUDIT_H
#define BUSGATE_AUDIT_H

#include "config.h"

/* Called once per finding with a one-line message. */
typedef void (*audit_warn_fn)(void *arg, const char *msg);

/*
 * Report each permissive setting of cfg to warn: a socket every local user
 * may connect to (listen.mode with the "others write" bit), a socket
 * directory anyone may write to without the sticky bit, a world-writable
 * config file, a secret file (credentials, token, TLS key) owned by another
 * user than the daemon's, credentials sent with TLS off, a bus certificate
 * that is not verified. Returns the number of findings.
 */
int audit_config(const struct config *cfg, audit_warn_fn warn, void *arg);

#endif /* BUSGATE_AUDIT_H */
