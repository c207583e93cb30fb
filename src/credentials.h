/*
 * The bus credentials: an INI file read with inih ("[bus]" section with
 * username, password or token), refused when group/world readable or
 * writable; an optional token file re-read at each connect. Secrets are
 * never logged and are wiped from memory when freed.
 */
#ifndef BUSGATE_CREDENTIALS_H
#define BUSGATE_CREDENTIALS_H

#include <stddef.h>

struct credentials {
    char *username;
    char *password;
    char *token;
};

/*
 * Read path. Returns 0, or -1 with a clear reason in err (file and line for
 * a syntax error; the mode for an unsafe file). Unknown keys are errors.
 */
int credentials_load(struct credentials *cr, const char *path, char *err, size_t errlen);

/* Read a token file (one JWT, surrounding white space trimmed) into
 * cr->token, replacing any previous token. Same permission rules. */
int credentials_load_token_file(struct credentials *cr, const char *path, char *err,
    size_t errlen);

/* Refuse a file that group or others may read or write: 0 or -1 + err. */
int credentials_check_mode(const char *path, char *err, size_t errlen);

/* Wipe (explicit_bzero) and free every secret. */
void credentials_free(struct credentials *cr);

#endif /* BUSGATE_CREDENTIALS_H */
