/*
 * SipHash, written from the paper ("SipHash: a fast short-input PRF",
 * Aumasson and Bernstein, 2012): the state is four 64-bit words, each
 * 8-byte little-endian word of input is mixed in with c rounds, the last
 * word carries the length's low byte, and d rounds finish.
 */
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#if defined(HAVE_SYS_RANDOM_H)
#include <sys/random.h>
#endif

#include "siphash.h"

#define ROTL(x, b) (((x) << (b)) | ((x) >> (64 - (b))))

struct sip_state {
    uint64_t v0, v1, v2, v3;
};

static inline void
sip_round(struct sip_state *s)
{
    s->v0 += s->v1;
    s->v1 = ROTL(s->v1, 13);
    s->v1 ^= s->v0;
    s->v0 = ROTL(s->v0, 32);
    s->v2 += s->v3;
    s->v3 = ROTL(s->v3, 16);
    s->v3 ^= s->v2;
    s->v0 += s->v3;
    s->v3 = ROTL(s->v3, 21);
    s->v3 ^= s->v0;
    s->v2 += s->v1;
    s->v1 = ROTL(s->v1, 17);
    s->v1 ^= s->v2;
    s->v2 = ROTL(s->v2, 32);
}

static inline void
sip_word(struct sip_state *s, uint64_t m, int c)
{
    s->v3 ^= m;
    for (int i = 0; i < c; i++)
        sip_round(s);
    s->v0 ^= m;
}

/* The little-endian word at p. */
static inline uint64_t
le_word(const unsigned char *p)
{
    uint64_t w;

    memcpy(&w, p, 8);
    return le64toh(w);
}

/* The last word: the n < 8 bytes left at p, with the length's low byte on
 * top. Byte by byte: a variable-length copy would cost a call. */
static inline uint64_t
last_word(const unsigned char *p, size_t n, size_t len)
{
    uint64_t w = (uint64_t)(len & 0xff) << 56;

    switch (n) {
    case 7:
        w |= (uint64_t)p[6] << 48;
        /* fall through */
    case 6:
        w |= (uint64_t)p[5] << 40;
        /* fall through */
    case 5:
        w |= (uint64_t)p[4] << 32;
        /* fall through */
    case 4:
        w |= (uint64_t)p[3] << 24;
        /* fall through */
    case 3:
        w |= (uint64_t)p[2] << 16;
        /* fall through */
    case 2:
        w |= (uint64_t)p[1] << 8;
        /* fall through */
    case 1:
        w |= p[0];
        break;
    default:
        break;
    }
    return w;
}

/* c and d are constants at each caller: the rounds unroll. */
static inline uint64_t
siphash(const struct siphash_key *key, const void *in, size_t n, int c, int d)
{
    const unsigned char *p = in;
    struct sip_state s = {
        key->k0 ^ 0x736f6d6570736575ull,
        key->k1 ^ 0x646f72616e646f6dull,
        key->k0 ^ 0x6c7967656e657261ull,
        key->k1 ^ 0x7465646279746573ull,
    };
    size_t i = 0;

    for (; i + 8 <= n; i += 8)
        sip_word(&s, le_word(p + i), c);
    sip_word(&s, last_word(p + i, n - i, n), c);
    s.v2 ^= 0xff;
    for (int j = 0; j < d; j++)
        sip_round(&s);
    return s.v0 ^ s.v1 ^ s.v2 ^ s.v3;
}

uint64_t
siphash13(const struct siphash_key *key, const void *p, size_t n)
{
    return siphash(key, p, n, 1, 3);
}

uint64_t
siphash24(const struct siphash_key *key, const void *p, size_t n)
{
    return siphash(key, p, n, 2, 4);
}

/* All of n bytes from fd; -1 on a short read or an error. */
static int
read_full(int fd, unsigned char *p, size_t n)
{
    while (n > 0) {
        ssize_t r = read(fd, p, n);

        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

int
siphash_key_random(struct siphash_key *key)
{
    unsigned char b[16];
    int fd, r = -1;

#if defined(HAVE_GETRANDOM)
    /* Blocks only until the kernel's pool is first seeded, at boot. */
    if (getrandom(b, sizeof b, 0) == (ssize_t)sizeof b)
        r = 0;
#endif
    if (r < 0 && (fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC)) >= 0) {
        r = read_full(fd, b, sizeof b);
        close(fd);
    }
    if (r < 0)
        memset(b, 0x5a, sizeof b);
    memcpy(&key->k0, b, 8);
    memcpy(&key->k1, b + 8, 8);
    return r;
}
