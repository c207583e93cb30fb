/*
 * SipHash (Aumasson and Bernstein, 2012): a keyed hash for tables whose
 * keys come from outside. With a key the sender cannot know, a sender
 * cannot choose keys that fall into one bucket and turn every lookup into
 * a walk of a long chain (hash flooding), as it can with an unkeyed hash.
 */
#ifndef BUSGATE_SIPHASH_H
#define BUSGATE_SIPHASH_H

#include <stddef.h>
#include <stdint.h>

struct siphash_key {
    uint64_t k0, k1;
};

/* A key from the kernel's random source (getrandom, else /dev/urandom).
 * Returns -1 when neither gave one; the key is then a fixed one. */
int siphash_key_random(struct siphash_key *key);

/* SipHash-1-3 of the n bytes at p (one compression round per 8-byte word,
 * three to finish): what tables use, as Python's and Rust's do, since a
 * table needs no MAC's margin. */
uint64_t siphash13(const struct siphash_key *key, const void *p, size_t n);
/* SipHash-2-4, the paper's: the same code with its rounds, so that the
 * paper's test vector checks it. */
uint64_t siphash24(const struct siphash_key *key, const void *p, size_t n);

#endif /* BUSGATE_SIPHASH_H */
