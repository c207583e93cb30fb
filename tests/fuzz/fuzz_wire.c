/*
 * libFuzzer target for the wire codec. The first input byte picks the
 * limits, the split pattern, the authentication method and the bus
 * protocol version (bits 3-4: 3, 4, 5, 6; so the v3 seeds, whose first
 * byte has them clear, stay v3); the rest is a byte stream from the bus.
 *
 * Checks, beyond "no crash, no leak, no UB":
 *  - every decoded message re-encodes to exactly as many bytes as it
 *    consumed, and the re-encoding decodes to an equal message whose own
 *    encoding is byte-identical (a fixed point);
 *  - need-more and error consume nothing;
 *  - the stream fed in random pieces, each its own evbuffer chain, decodes
 *    to the same messages and ends the same way (same error, same cause)
 *    as the stream fed whole;
 *  - the authentication payload decoders obey the same round trip.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#include "wire.h"
#include "fuzz.h"

static int
pick_version(uint8_t seed)
{
    static const int versions[] = { WIRE_V3, WIRE_V4, WIRE_V5, WIRE_V6 };

    return versions[(seed >> 3) & 3];
}

/* Small limits reach the refusals often; roomy ones reach deep messages. */
static void
pick_limits(uint8_t seed, struct wire_limits *lim)
{
    if (seed & 0x80) {
        lim->max_string = 8;
        lim->max_payload = 16;
        lim->max_packets = 3;
        lim->max_entitlements = 3;
        lim->max_message = 96;
    } else {
        lim->max_string = 64;
        lim->max_payload = 512;
        lim->max_packets = 16;
        lim->max_entitlements = 16;
        lim->max_message = 4096;
    }
}

/* b was decoded by wire_decode, so NUL-terminated; a perhaps by
 * wire_read, a reference into its buffer. */
static bool
str_equal(const struct wire_str *a, const struct wire_str *b)
{
    return a->len == b->len && (a->len == 0 || memcmp(a->ptr, b->ptr, a->len) == 0) &&
        b->ptr[b->len] == '\0';
}

static bool
ints_equal(const struct wire_ints *a, const struct wire_ints *b)
{
    return a->n == b->n &&
        (a->n == 0 ? a->v == NULL && b->v == NULL
                   : memcmp(a->v, b->v, a->n * sizeof *a->v) == 0);
}

static bool
msg_equal(const struct wire_msg *a, const struct wire_msg *b)
{
    if (a->type != b->type || a->version != b->version ||
        !str_equal(&a->content_type, &b->content_type) || !str_equal(&a->user, &b->user) ||
        !str_equal(&a->host, &b->host) || !str_equal(&a->feed, &b->feed) ||
        !str_equal(&a->topic, &b->topic) ||
        memcmp(a->client_id, b->client_id, WIRE_GUID_LEN) != 0 ||
        a->is_image != b->is_image || a->is_add != b->is_add ||
        a->auth_required != b->auth_required ||
        !ints_equal(&a->entitlements, &b->entitlements) || a->n_packets != b->n_packets ||
        (a->packets == NULL) != (b->packets == NULL))
        return false;
    for (uint32_t i = 0; i < a->n_packets; i++) {
        const struct wire_packet *p = &a->packets[i], *q = &b->packets[i];

        if (!ints_equal(&p->entitlements, &q->entitlements) || p->len != q->len ||
            (p->data == NULL) != (q->data == NULL) ||
            (p->len > 0 && memcmp(p->data, q->data, p->len) != 0))
            return false;
    }
    return true;
}

static bool
buffers_equal(struct evbuffer *a, struct evbuffer *b)
{
    size_t n = evbuffer_get_length(a);

    return n == evbuffer_get_length(b) &&
        (n == 0 || memcmp(evbuffer_pullup(a, -1), evbuffer_pullup(b, -1), n) == 0);
}

/* msg was just decoded from consumed bytes: check its round trip, and
 * append its encoding to log. */
static void
check_round_trip(const struct wire_msg *msg, size_t consumed, const struct wire_limits *lim,
    struct evbuffer *log)
{
    struct evbuffer *e1 = evbuffer_new(), *e2 = evbuffer_new();
    struct wire_msg again;
    const char *cause = NULL;

    CHECK(e1 != NULL && e2 != NULL);
    CHECK(wire_encoded_size(msg) == consumed);
    CHECK(wire_encode(e1, msg) == 0);
    CHECK(evbuffer_get_length(e1) == consumed);
    evbuffer_add(log, evbuffer_pullup(e1, -1), consumed);
    {
        /* One walk into a region: the same bytes in exactly that room,
         * nothing in one byte less. */
        uint8_t *room = malloc(consumed + 1);

        CHECK(room != NULL);
        CHECK(wire_encode_into(room, room + consumed, msg) == room + consumed);
        CHECK(memcmp(room, evbuffer_pullup(e1, -1), consumed) == 0);
        CHECK(wire_encode_into(room, room + consumed - 1, msg) == NULL);
        free(room);
    }
    wire_msg_init(&again);
    again.version = msg->version;
    CHECK(wire_decode(e1, lim, &again, &cause) == WIRE_DECODED);
    CHECK(evbuffer_get_length(e1) == 0);
    CHECK(msg_equal(msg, &again));
    CHECK(wire_encode(e2, &again) == 0);
    CHECK(wire_encode(e1, msg) == 0);
    CHECK(buffers_equal(e1, e2));
    wire_msg_free(&again);
    evbuffer_free(e1);
    evbuffer_free(e2);
}

/* How one pass over the stream went. */
struct outcome {
    struct evbuffer *log; /* re-encodings of the decoded messages */
    size_t count;
    size_t consumed;
    enum wire_result last;
    char cause[256];
};

/* Decode everything decodable at the front of buf into o. */
static enum wire_result
drain(struct evbuffer *buf, const struct wire_limits *lim, struct wire_msg *msg,
    struct outcome *o)
{
    for (;;) {
        size_t before = evbuffer_get_length(buf);
        const char *cause = NULL;
        enum wire_result r = wire_decode(buf, lim, msg, &cause);

        if (r != WIRE_DECODED) {
            CHECK(evbuffer_get_length(buf) == before);
            if (r == WIRE_ERROR) {
                CHECK(cause != NULL);
                snprintf(o->cause, sizeof o->cause, "%s", cause);
            }
            return o->last = r;
        }
        CHECK(evbuffer_get_length(buf) < before);
        check_round_trip(msg, before - evbuffer_get_length(buf), lim, o->log);
        o->consumed += before - evbuffer_get_length(buf);
        o->count++;
    }
}

/* drain, with one wire_reader: message after message by reference (the
 * bus's own way), drained at the end. */
static enum wire_result
drain_reader(struct evbuffer *buf, const struct wire_limits *lim, struct wire_msg *msg,
    struct outcome *o)
{
    size_t before = evbuffer_get_length(buf), taken = 0;
    struct wire_reader rd;
    const char *cause = NULL;
    enum wire_result r;

    wire_reader_begin(&rd, buf);
    while ((r = wire_read(&rd, lim, msg, &cause)) == WIRE_DECODED) {
        check_round_trip(msg, rd.size, lim, o->log);
        taken += rd.size;
        o->count++;
    }
    CHECK(wire_reader_end(&rd) == 0);
    CHECK(evbuffer_get_length(buf) == before - taken);
    o->consumed += taken;
    if (r == WIRE_ERROR) {
        CHECK(cause != NULL);
        snprintf(o->cause, sizeof o->cause, "%s", cause);
    }
    return o->last = r;
}

static void
run_whole(const uint8_t *data, size_t size, int version, const struct wire_limits *lim,
    struct outcome *o)
{
    struct evbuffer *buf = evbuffer_new();
    struct wire_msg msg;

    CHECK(buf != NULL);
    evbuffer_add(buf, data, size);
    wire_msg_init(&msg);
    msg.version = version;
    drain(buf, lim, &msg, o);
    CHECK(o->consumed + evbuffer_get_length(buf) == size);
    wire_msg_free(&msg);
    evbuffer_free(buf);
}

/* The same stream in pseudo-random pieces, each its own chain, decoded
 * by wire_decode or (reader) by a wire_reader per arrival. */
static void
run_split(const uint8_t *data, size_t size, uint8_t seed, const struct wire_limits *lim,
    bool reader, struct outcome *o)
{
    enum wire_result (*drain_fn)(struct evbuffer *, const struct wire_limits *,
        struct wire_msg *, struct outcome *) = reader ? drain_reader : drain;
    struct evbuffer *buf = evbuffer_new();
    struct wire_msg msg;
    uint32_t x = 0x9e3779b9u ^ seed;
    size_t off = 0;

    CHECK(buf != NULL);
    wire_msg_init(&msg);
    msg.version = pick_version(seed);
    while (off < size) {
        size_t piece;

        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        piece = (seed & 0x40) ? 1 + x % 4 : 1 + x % 23;
        if (piece > size - off)
            piece = size - off;
        evbuffer_add_reference(buf, data + off, piece, NULL, NULL);
        off += piece;
        if (drain_fn(buf, lim, &msg, o) == WIRE_ERROR)
            break;
    }
    if (size == 0)
        drain_fn(buf, lim, &msg, o);
    wire_msg_free(&msg);
    evbuffer_free(buf);
}

static bool
cstr_equal(const char *a, const char *b)
{
    return (a == NULL && b == NULL) || (a != NULL && b != NULL && strcmp(a, b) == 0);
}

static bool
auth_equal(const struct wire_auth *a, const struct wire_auth *b)
{
    return a->method == b->method && a->version == b->version &&
        cstr_equal(a->username, b->username) && cstr_equal(a->password, b->password) &&
        cstr_equal(a->token, b->token) && cstr_equal(a->impersonating, b->impersonating) &&
        cstr_equal(a->forwarded_for, b->forwarded_for) &&
        cstr_equal(a->application, b->application);
}

static void
check_auth(const uint8_t *data, size_t size, int version, enum wire_auth_method method,
    const struct wire_limits *lim)
{
    struct evbuffer *buf = evbuffer_new(), *enc = evbuffer_new();
    struct wire_auth a, b;
    const char *cause = NULL;
    enum wire_result r;
    size_t used;

    CHECK(buf != NULL && enc != NULL);
    evbuffer_add(buf, data, size);
    r = wire_decode_auth_version(buf, version, method, lim, &a, &cause);
    if (r != WIRE_DECODED) {
        CHECK(evbuffer_get_length(buf) == size);
        CHECK(r == WIRE_NEED_MORE || cause != NULL);
        wire_auth_free(&a);
        goto out;
    }
    used = size - evbuffer_get_length(buf);
    /* A NUL inside a string cannot pass through a C string: only check
     * the round trip when every string came out whole. A connection
     * string may list its keys in any order; it is written in one. */
    CHECK(wire_encode_auth(enc, &a) == 0);
    if (evbuffer_get_length(enc) == used) {
        CHECK(version >= WIRE_V4 || memcmp(evbuffer_pullup(enc, -1), data, used) == 0);
        CHECK(wire_decode_auth_version(enc, version, method, lim, &b, &cause) ==
            WIRE_DECODED);
        CHECK(evbuffer_get_length(enc) == 0);
        CHECK(auth_equal(&a, &b));
        wire_auth_free(&b);
    }
    wire_auth_free(&a);
out:
    evbuffer_free(buf);
    evbuffer_free(enc);
}

/* Two passes over the same stream decoded the same messages and stopped
 * the same way. */
static void
check_same(const struct outcome *a, const struct outcome *b)
{
    CHECK(a->count == b->count);
    CHECK(a->consumed == b->consumed);
    CHECK(buffers_equal(a->log, b->log));
    if (a->last == WIRE_ERROR) {
        CHECK(b->last == WIRE_ERROR);
        CHECK(strcmp(a->cause, b->cause) == 0);
    } else {
        CHECK(a->last == WIRE_NEED_MORE);
        CHECK(b->last == WIRE_NEED_MORE);
    }
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct wire_limits lim;
    struct outcome whole, split;
    uint8_t seed;

    if (size < 1)
        return 0;
    seed = data[0];
    data++;
    size--;
    pick_limits(seed, &lim);
    memset(&whole, 0, sizeof whole);
    whole.log = evbuffer_new();
    CHECK(whole.log != NULL);
    run_whole(data, size, pick_version(seed), &lim, &whole);
    for (int reader = 0; reader < 2; reader++) {
        memset(&split, 0, sizeof split);
        CHECK((split.log = evbuffer_new()) != NULL);
        run_split(data, size, seed, &lim, reader, &split);
        check_same(&whole, &split);
        evbuffer_free(split.log);
    }
    evbuffer_free(whole.log);

    check_auth(data, size, pick_version(seed),
        (seed & 1) ? WIRE_AUTH_BASIC : WIRE_AUTH_TOKEN, &lim);
    return 0;
}
