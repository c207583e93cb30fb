/*
 * The wire codec against the golden vectors of each bus protocol
 * (tests/vectors/wire-v3.json, -v4, -v6, made with the real python clients
 * 3.0.1, 4.1.0 and 6.0.0-alpha.1): every vector decodes to its listed
 * fields, encodes from them to the same bytes, survives any split, reports
 * need-more on every truncation and an error on every limit violation;
 * plus hand-made malformed input. The vector tests run once per version.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <event2/buffer.h>

#include "guid.h"
#include "wire.h"

/* --- a small JSON reader, just enough for the vectors file --- */

enum jtype { J_NULL, J_BOOL, J_NUM, J_STR, J_ARR, J_OBJ };

struct jval {
    enum jtype t;
    bool b;
    long long num; /* the vectors only hold integers */
    char *s;       /* J_STR: UTF-8, NUL-terminated */
    size_t slen;
    struct jval *items; /* J_ARR elements or J_OBJ values */
    char **keys;        /* J_OBJ keys */
    size_t n;
};

struct jparser {
    const char *p, *end;
    const char *err;
};

static int jparse_value(struct jparser *jp, struct jval *v, int depth);

static void
jskip_ws(struct jparser *jp)
{
    while (jp->p < jp->end &&
        (*jp->p == ' ' || *jp->p == '\t' || *jp->p == '\n' || *jp->p == '\r'))
        jp->p++;
}

static int
jfail(struct jparser *jp, const char *err)
{
    if (jp->err == NULL)
        jp->err = err;
    return -1;
}

static int
jhex4(struct jparser *jp, unsigned *out)
{
    unsigned v = 0;

    if (jp->end - jp->p < 4)
        return jfail(jp, "short \\u escape");
    for (int i = 0; i < 4; i++) {
        char c = *jp->p++;

        v <<= 4;
        if (c >= '0' && c <= '9')
            v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f')
            v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            v |= (unsigned)(c - 'A' + 10);
        else
            return jfail(jp, "bad \\u escape");
    }
    *out = v;
    return 0;
}

static size_t
jput_utf8(char *o, unsigned cp)
{
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (char)(0xc0 | cp >> 6);
        o[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (char)(0xe0 | cp >> 12);
        o[1] = (char)(0x80 | (cp >> 6 & 0x3f));
        o[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    o[0] = (char)(0xf0 | cp >> 18);
    o[1] = (char)(0x80 | (cp >> 12 & 0x3f));
    o[2] = (char)(0x80 | (cp >> 6 & 0x3f));
    o[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

static int
jescape(struct jparser *jp, char *o, size_t *n)
{
    static const char from[] = "\"\\/bfnrt", to[] = "\"\\/\b\f\n\r\t";
    unsigned cp, lo;
    const char *e;
    char c;

    if (jp->p >= jp->end)
        return jfail(jp, "short escape");
    c = *jp->p++;
    if (c != 'u') {
        if ((e = strchr(from, c)) == NULL || c == '\0')
            return jfail(jp, "bad escape");
        o[(*n)++] = to[e - from];
        return 0;
    }
    if (jhex4(jp, &cp) != 0)
        return -1;
    if (cp >= 0xd800 && cp < 0xdc00) {
        if (jp->end - jp->p < 6 || jp->p[0] != '\\' || jp->p[1] != 'u')
            return jfail(jp, "lone surrogate");
        jp->p += 2;
        if (jhex4(jp, &lo) != 0 || lo < 0xdc00 || lo > 0xdfff)
            return jfail(jp, "bad surrogate pair");
        cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
    }
    *n += jput_utf8(o + *n, cp);
    return 0;
}

/* The decoded string is never longer than its JSON form. */
static int
jparse_string(struct jparser *jp, char **out, size_t *outlen)
{
    const char *start = ++jp->p;
    char *o;
    size_t n = 0;

    while (jp->p < jp->end && *jp->p != '"')
        jp->p += *jp->p == '\\' ? 2 : 1;
    if (jp->p >= jp->end)
        return jfail(jp, "unterminated string");
    o = malloc((size_t)(jp->p - start) + 1);
    assert_non_null(o);
    jp->p = start;
    while (*jp->p != '"') {
        if ((unsigned char)*jp->p < 0x20) {
            free(o);
            return jfail(jp, "control character in string");
        }
        if (*jp->p == '\\') {
            jp->p++;
            if (jescape(jp, o, &n) != 0) {
                free(o);
                return -1;
            }
        } else {
            o[n++] = *jp->p++;
        }
    }
    jp->p++;
    o[n] = '\0';
    *out = o;
    *outlen = n;
    return 0;
}

static int
jparse_number(struct jparser *jp, struct jval *v)
{
    char buf[32], *endp;
    size_t n = 0;

    while (jp->p < jp->end && n < sizeof buf - 1 &&
        (*jp->p == '-' || (*jp->p >= '0' && *jp->p <= '9')))
        buf[n++] = *jp->p++;
    buf[n] = '\0';
    if (jp->p < jp->end && strchr(".eE", *jp->p) != NULL)
        return jfail(jp, "non-integer number");
    v->t = J_NUM;
    v->num = strtoll(buf, &endp, 10);
    return n == 0 || *endp != '\0' ? jfail(jp, "bad number") : 0;
}

static int
jparse_word(struct jparser *jp, struct jval *v)
{
    static const struct {
        const char *w;
        enum jtype t;
        bool b;
    } words[] = {
        { "null", J_NULL, false },
        { "true", J_BOOL, true },
        { "false", J_BOOL, false },
    };

    for (size_t i = 0; i < sizeof words / sizeof words[0]; i++) {
        size_t len = strlen(words[i].w);

        if ((size_t)(jp->end - jp->p) >= len && memcmp(jp->p, words[i].w, len) == 0) {
            jp->p += len;
            v->t = words[i].t;
            v->b = words[i].b;
            return 0;
        }
    }
    return jfail(jp, "unexpected character");
}

/* Arrays and objects: elements separated by commas up to close. */
static int
jparse_container(struct jparser *jp, struct jval *v, bool obj, int depth)
{
    char close = obj ? '}' : ']';
    size_t cap = 0;

    v->t = obj ? J_OBJ : J_ARR;
    jp->p++;
    jskip_ws(jp);
    if (jp->p < jp->end && *jp->p == close) {
        jp->p++;
        return 0;
    }
    for (;;) {
        if (v->n == cap) {
            cap = cap ? cap * 2 : 8;
            v->items = realloc(v->items, cap * sizeof *v->items);
            v->keys = realloc(v->keys, cap * sizeof *v->keys);
            assert_true(v->items != NULL && v->keys != NULL);
        }
        memset(&v->items[v->n], 0, sizeof v->items[v->n]);
        v->keys[v->n] = NULL;
        jskip_ws(jp);
        if (obj) {
            size_t klen;

            if (jp->p >= jp->end || *jp->p != '"' ||
                jparse_string(jp, &v->keys[v->n], &klen) != 0)
                return jfail(jp, "bad object key");
            jskip_ws(jp);
            if (jp->p >= jp->end || *jp->p++ != ':')
                return jfail(jp, "missing colon");
        }
        v->n++;
        if (jparse_value(jp, &v->items[v->n - 1], depth + 1) != 0)
            return -1;
        jskip_ws(jp);
        if (jp->p < jp->end && *jp->p == ',') {
            jp->p++;
            continue;
        }
        if (jp->p < jp->end && *jp->p == close) {
            jp->p++;
            return 0;
        }
        return jfail(jp, "missing comma or close");
    }
}

static int
jparse_value(struct jparser *jp, struct jval *v, int depth)
{
    if (depth > 32)
        return jfail(jp, "nested too deeply");
    jskip_ws(jp);
    if (jp->p >= jp->end)
        return jfail(jp, "unexpected end");
    switch (*jp->p) {
    case '{':
        return jparse_container(jp, v, true, depth);
    case '[':
        return jparse_container(jp, v, false, depth);
    case '"':
        v->t = J_STR;
        return jparse_string(jp, &v->s, &v->slen);
    case '-':
    case '0':
    case '1':
    case '2':
    case '3':
    case '4':
    case '5':
    case '6':
    case '7':
    case '8':
    case '9':
        return jparse_number(jp, v);
    default:
        return jparse_word(jp, v);
    }
}

static void
jfree(struct jval *v)
{
    for (size_t i = 0; i < v->n; i++) {
        jfree(&v->items[i]);
        if (v->keys != NULL)
            free(v->keys[i]);
    }
    free(v->items);
    free(v->keys);
    free(v->s);
    memset(v, 0, sizeof *v);
}

/* The member key of object v, or NULL. */
static const struct jval *
jget(const struct jval *v, const char *key)
{
    if (v == NULL || v->t != J_OBJ)
        return NULL;
    for (size_t i = 0; i < v->n; i++)
        if (strcmp(v->keys[i], key) == 0)
            return &v->items[i];
    return NULL;
}

static const struct jval *
jget_type(const struct jval *v, const char *key, enum jtype t)
{
    const struct jval *m = jget(v, key);

    assert_non_null(m);
    assert_int_equal(m->t, t);
    return m;
}

/* --- test fixtures --- */

static struct jval vectors_doc;
static const struct jval *vectors;   /* the "vectors" array */
static int vector_version = WIRE_V3; /* the protocol of the loaded file */

/* A message to decode or encode at the loaded vectors' version. */
static void
vmsg_init(struct wire_msg *msg)
{
    wire_msg_init(msg);
    msg->version = vector_version;
}

static char *
read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    size_t cap = 0, n = 0, got;

    if (f == NULL)
        return NULL;
    do {
        if (n == cap) {
            cap = cap ? cap * 2 : 65536;
            buf = realloc(buf, cap);
            assert_non_null(buf);
        }
        got = fread(buf + n, 1, cap - n, f);
        n += got;
    } while (got > 0);
    fclose(f);
    *len = n;
    return buf;
}

static int
load_vectors(int version)
{
    const char *top = getenv("top_srcdir");
    char path[4096], rel[64];
    struct jparser jp;
    size_t len;
    char *text;

    vector_version = version;
    snprintf(rel, sizeof rel, "tests/vectors/wire-v%d.json", version);
    snprintf(path, sizeof path, "%s/%s", top != NULL ? top : ".", rel);
    if ((text = read_file(path, &len)) == NULL && (text = read_file(rel, &len)) == NULL) {
        fprintf(stderr, "cannot read %s\n", path);
        return -1;
    }
    jp.p = text;
    jp.end = text + len;
    jp.err = NULL;
    if (jparse_value(&jp, &vectors_doc, 0) != 0) {
        fprintf(stderr, "%s: JSON error at offset %ld: %s\n", path, (long)(jp.p - text),
            jp.err);
        free(text);
        jfree(&vectors_doc);
        return -1;
    }
    free(text);
    vectors = jget(&vectors_doc, "vectors");
    if (vectors == NULL || vectors->t != J_ARR || vectors->n == 0) {
        fprintf(stderr, "%s: no vectors\n", path);
        jfree(&vectors_doc);
        return -1;
    }
    return 0;
}

static int
load_v3(void **state)
{
    return load_vectors(WIRE_V3);
}

static int
load_v4(void **state)
{
    return load_vectors(WIRE_V4);
}

static int
load_v6(void **state)
{
    return load_vectors(WIRE_V6);
}

static int
free_vectors(void **state)
{
    jfree(&vectors_doc);
    memset(&vectors_doc, 0, sizeof vectors_doc);
    vectors = NULL;
    vector_version = WIRE_V3;
    return 0;
}

static bool
is_message_vector(const struct jval *v)
{
    const struct jval *id = jget(v, "type_id");

    return id != NULL && id->t == J_NUM;
}

static bool
is_auth_vector(const struct jval *v)
{
    const struct jval *t = jget(v, "type");

    return t != NULL && t->t == J_STR && strncmp(t->s, "auth-", 5) == 0;
}

static int
hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Decode hex text into a malloc'd buffer (never NULL). */
static uint8_t *
unhex(const char *hex, size_t *len)
{
    size_t n = strlen(hex);
    uint8_t *out = malloc(n / 2 + 1);

    assert_non_null(out);
    assert_int_equal(n % 2, 0);
    for (size_t i = 0; i < n / 2; i++) {
        int hi = hexval(hex[2 * i]), lo = hexval(hex[2 * i + 1]);

        assert_true(hi >= 0 && lo >= 0);
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    *len = n / 2;
    return out;
}

static uint8_t *
vector_bytes(const struct jval *v, size_t *len)
{
    return unhex(jget_type(v, "hex", J_STR)->s, len);
}

static const char *
vector_name(const struct jval *v)
{
    return jget_type(v, "name", J_STR)->s;
}

/* The bytes in buf, copied out (caller frees). */
static uint8_t *
buffer_bytes(struct evbuffer *buf, size_t *len)
{
    *len = evbuffer_get_length(buf);
    uint8_t *out = malloc(*len + 1);

    assert_non_null(out);
    assert_int_equal(evbuffer_copyout(buf, out, *len), (ev_ssize_t)*len);
    return out;
}

static void
assert_buffer_equals(struct evbuffer *buf, const uint8_t *want, size_t len,
    const char *name)
{
    size_t got_len;
    uint8_t *got = buffer_bytes(buf, &got_len);

    if (got_len != len || memcmp(got, want, len) != 0) {
        fprintf(stderr, "%s: encoding differs (%zu vs %zu bytes)\n", name, got_len, len);
        fail();
    }
    free(got);
}

static void
limits_wide(struct wire_limits *lim)
{
    wire_limits_default(lim);
}

/* --- what each message type carries, written down independently --- */

/* "is_image" is the image slot: "content_type" from version 6 on. */
static const char *const expected_fields[WIRE_TYPE_MAX + 1][8] = {
    [1] = { "feed", "topic", "is_image", "data_packets" },
    [2] = { "client_id", "feed", "topic", "is_image", "data_packets" },
    [3] = { "user", "host", "client_id", "feed", "topic", "is_add" },
    [4] = { "feed", "is_add" },
    [5] = { "feed", "topic", "is_add" },
    [6] = { "client_id", "host", "user", "feed", "topic" },
    [7] = { "client_id", "feed", "topic", "is_authorization_required", "entitlements" },
    [8] = { "user", "host", "feed", "topic", "is_image", "data_packets" },
    [9] = { "user", "host", "client_id", "feed", "topic", "is_image", "data_packets" },
};

static const struct wire_str *
str_field(const struct wire_msg *msg, const char *key)
{
    if (strcmp(key, "user") == 0)
        return &msg->user;
    if (strcmp(key, "host") == 0)
        return &msg->host;
    if (strcmp(key, "feed") == 0)
        return &msg->feed;
    if (strcmp(key, "topic") == 0)
        return &msg->topic;
    if (strcmp(key, "content_type") == 0)
        return &msg->content_type;
    return NULL;
}

static bool
bool_field(const struct wire_msg *msg, const char *key)
{
    if (strcmp(key, "is_image") == 0)
        return msg->is_image;
    if (strcmp(key, "is_add") == 0)
        return msg->is_add;
    assert_string_equal(key, "is_authorization_required");
    return msg->auth_required;
}

/* Strings were decoded by wire_read: references, not NUL-terminated. */
static bool decoded_by_ref;

static void
check_str(const struct wire_str *s, const struct jval *want)
{
    assert_non_null(s->ptr);
    if (!decoded_by_ref || s->len == 0)
        assert_int_equal(s->ptr[s->len], '\0');
    if (want->t == J_NULL) {
        assert_int_equal(s->len, 0);
        return;
    }
    assert_int_equal(want->t, J_STR);
    assert_int_equal(s->len, want->slen);
    assert_memory_equal(s->ptr, want->s, want->slen);
}

static void
check_ints(const struct wire_ints *ints, const struct jval *want)
{
    if (want->t == J_NULL || want->n == 0) {
        /* Null and empty are the same bytes and decode as null. */
        assert_int_equal(ints->n, 0);
        assert_null(ints->v);
        return;
    }
    assert_int_equal(want->t, J_ARR);
    assert_int_equal(ints->n, want->n);
    assert_true(((uintptr_t)ints->v % sizeof(int32_t)) == 0);
    for (size_t i = 0; i < want->n; i++)
        assert_int_equal(ints->v[i], want->items[i].num);
}

static void
check_data(const struct wire_packet *pk, const struct jval *want)
{
    size_t len;
    uint8_t *bytes;

    if (want->t == J_NULL) {
        assert_int_equal(pk->len, 0);
        assert_null(pk->data);
        return;
    }
    assert_int_equal(want->t, J_STR);
    bytes = unhex(want->s, &len);
    assert_int_equal(pk->len, len);
    if (len > 0)
        assert_memory_equal(pk->data, bytes, len);
    free(bytes);
}

static void
check_packets(const struct wire_msg *msg, const struct jval *want)
{
    if (want->t == J_NULL || want->n == 0) {
        assert_int_equal(msg->n_packets, 0);
        assert_null(msg->packets);
        return;
    }
    assert_int_equal(want->t, J_ARR);
    assert_int_equal(msg->n_packets, want->n);
    for (size_t i = 0; i < want->n; i++) {
        check_ints(&msg->packets[i].entitlements, jget(&want->items[i], "entitlements"));
        check_data(&msg->packets[i], jget(&want->items[i], "data_hex"));
    }
}

static void
check_client_id(const struct wire_msg *msg, const struct jval *want)
{
    char text[GUID_TEXT_LEN + 1];
    size_t len;
    uint8_t *wire = unhex(jget_type(want, "wire_hex", J_STR)->s, &len);

    assert_int_equal(len, WIRE_GUID_LEN);
    assert_memory_equal(msg->client_id, wire, WIRE_GUID_LEN);
    guid_to_text(msg->client_id, text);
    assert_string_equal(text, jget_type(want, "uuid", J_STR)->s);
    free(wire);
}

/* msg holds exactly the fields the vector lists, with their values. */
static void
check_msg(const struct wire_msg *msg, const struct jval *v)
{
    const struct jval *fields = jget_type(v, "fields", J_OBJ);
    long long type = jget_type(v, "type_id", J_NUM)->num;
    size_t n = 0;

    assert_int_equal(msg->type, type);
    assert_string_equal(wire_type_name((int)type), jget_type(v, "type", J_STR)->s);
    for (const char *const *slot = expected_fields[type]; *slot != NULL; slot++, n++) {
        const char *const *k = slot, *ct = "content_type";
        const struct jval *want;

        if (vector_version >= WIRE_V6 && strcmp(*slot, "is_image") == 0)
            k = &ct;
        want = jget(fields, *k);

        if (want == NULL) {
            fprintf(stderr, "%s: field %s missing\n", vector_name(v), *k);
            fail();
        }
        assert_string_equal(fields->keys[n], *k); /* wire order */
        if (str_field(msg, *k) != NULL)
            check_str(str_field(msg, *k), want);
        else if (strcmp(*k, "client_id") == 0)
            check_client_id(msg, want);
        else if (strcmp(*k, "entitlements") == 0)
            check_ints(&msg->entitlements, want);
        else if (strcmp(*k, "data_packets") == 0)
            check_packets(msg, want);
        else
            assert_int_equal(bool_field(msg, *k), want->b);
    }
    assert_int_equal(fields->n, n);
}

/* --- building a message from the vector's fields, for encoding --- */

struct built {
    struct wire_msg msg;
    struct wire_packet *packets;
    int32_t *ints[65]; /* [0] the message's set, [1 + i] packet i's */
    uint8_t *data[64];
};

static void
build_ints(struct wire_ints *ints, int32_t **store, const struct jval *want)
{
    ints->n = 0;
    ints->v = NULL;
    if (want == NULL || want->t != J_ARR || want->n == 0)
        return;
    *store = calloc(want->n, sizeof **store);
    assert_non_null(*store);
    for (size_t i = 0; i < want->n; i++)
        (*store)[i] = (int32_t)want->items[i].num;
    ints->v = *store;
    ints->n = (uint32_t)want->n;
}

static void
build_packets(struct built *b, const struct jval *want)
{
    size_t len;

    if (want->t != J_ARR || want->n == 0)
        return;
    assert_true(want->n <= 64);
    b->packets = calloc(want->n, sizeof *b->packets);
    assert_non_null(b->packets);
    for (size_t i = 0; i < want->n; i++) {
        const struct jval *data = jget(&want->items[i], "data_hex");

        build_ints(&b->packets[i].entitlements, &b->ints[1 + i],
            jget(&want->items[i], "entitlements"));
        if (data->t == J_STR) {
            b->data[i] = unhex(data->s, &len);
            b->packets[i].data = b->data[i];
            b->packets[i].len = (uint32_t)len;
        }
    }
    b->msg.packets = b->packets;
    b->msg.n_packets = (uint32_t)want->n;
}

static void
build_msg(struct built *b, const struct jval *v)
{
    const struct jval *fields = jget_type(v, "fields", J_OBJ);

    memset(b, 0, sizeof *b);
    vmsg_init(&b->msg);
    b->msg.type = (enum wire_type)jget_type(v, "type_id", J_NUM)->num;
    for (size_t i = 0; i < fields->n; i++) {
        const char *k = fields->keys[i];
        const struct jval *f = &fields->items[i];
        struct wire_str *s = (struct wire_str *)str_field(&b->msg, k);

        if (s != NULL) {
            s->ptr = f->t == J_STR ? f->s : NULL;
            s->len = f->t == J_STR ? (uint32_t)f->slen : 0;
        } else if (strcmp(k, "client_id") == 0) {
            assert_int_equal(guid_from_text(jget_type(f, "uuid", J_STR)->s, GUID_TEXT_LEN,
                                 b->msg.client_id),
                0);
        } else if (strcmp(k, "entitlements") == 0) {
            build_ints(&b->msg.entitlements, &b->ints[0], f);
        } else if (strcmp(k, "data_packets") == 0) {
            build_packets(b, f);
        } else if (strcmp(k, "is_image") == 0) {
            assert_true(vector_version < WIRE_V6);
            b->msg.is_image = f->b;
        } else if (strcmp(k, "is_add") == 0) {
            b->msg.is_add = f->b;
        } else {
            b->msg.auth_required = f->b;
        }
    }
}

static void
built_free(struct built *b)
{
    for (size_t i = 0; i < 65; i++)
        free(b->ints[i]);
    for (size_t i = 0; i < 64; i++)
        free(b->data[i]);
    free(b->packets);
}

/* --- the vector tests --- */

/* Decode bytes from buf (which holds exactly one message) and check it. */
static void
decode_one(struct evbuffer *buf, const struct jval *v, struct wire_msg *msg)
{
    struct wire_limits lim;
    const char *cause = NULL;
    enum wire_result r;

    limits_wide(&lim);
    r = wire_decode(buf, &lim, msg, &cause);
    if (r != WIRE_DECODED) {
        fprintf(stderr, "%s: result %d: %s\n", vector_name(v), r, cause ? cause : "");
        fail();
    }
    assert_int_equal(evbuffer_get_length(buf), 0);
    check_msg(msg, v);
}

static void
test_vectors_decode(void **state)
{
    size_t count = 0;

    for (size_t i = 0; i < vectors->n; i++) {
        const struct jval *v = &vectors->items[i];
        struct evbuffer *buf, *out;
        struct wire_msg msg;
        size_t len;
        uint8_t *bytes;

        if (!is_message_vector(v))
            continue;
        bytes = vector_bytes(v, &len);
        buf = evbuffer_new();
        out = evbuffer_new();
        vmsg_init(&msg);
        evbuffer_add(buf, bytes, len);
        decode_one(buf, v, &msg);
        /* Re-encoding the decoded message gives the same bytes. */
        assert_int_equal(wire_encoded_size(&msg), len);
        assert_int_equal(wire_encode(out, &msg), 0);
        assert_buffer_equals(out, bytes, len, vector_name(v));
        wire_msg_free(&msg);
        evbuffer_free(buf);
        evbuffer_free(out);
        free(bytes);
        count++;
    }
    assert_true(count >= 9);
}

/* wire_encode_into: the same bytes in room of exactly len, NULL (and
 * nothing past the room touched) in any less. */
static void
encode_into_exactly(const struct wire_msg *msg, const uint8_t *bytes, size_t len,
    const char *name)
{
    uint8_t *room = malloc(len + 1);

    for (size_t have = 0; have <= len; have++) {
        uint8_t *end;

        memset(room, 0xee, len + 1);
        end = wire_encode_into(room, room + have, msg);
        if (have < len) {
            assert_null(end);
        } else {
            assert_ptr_equal(end, room + len);
            if (memcmp(room, bytes, len) != 0)
                fail_msg("%s: wire_encode_into wrote other bytes", name);
        }
        assert_int_equal(room[have], 0xee);
    }
    free(room);
}

static void
test_vectors_encode(void **state)
{
    for (size_t i = 0; i < vectors->n; i++) {
        const struct jval *v = &vectors->items[i];
        struct evbuffer *out;
        struct built b;
        size_t len;
        uint8_t *bytes;

        if (!is_message_vector(v))
            continue;
        bytes = vector_bytes(v, &len);
        build_msg(&b, v);
        out = evbuffer_new();
        evbuffer_add(out, "x", 1); /* appends, never replaces */
        assert_int_equal(wire_encoded_size(&b.msg), len);
        assert_int_equal(wire_encode(out, &b.msg), 0);
        evbuffer_drain(out, 1);
        assert_buffer_equals(out, bytes, len, vector_name(v));
        encode_into_exactly(&b.msg, bytes, len, vector_name(v));
        evbuffer_free(out);
        built_free(&b);
        free(bytes);
    }
}

/* Fed one byte at a time (each call sees one more), decodes identically. */
static void
test_vectors_bytewise(void **state)
{
    struct wire_limits lim;

    limits_wide(&lim);
    for (size_t i = 0; i < vectors->n; i++) {
        const struct jval *v = &vectors->items[i];
        struct evbuffer *buf = evbuffer_new();
        struct wire_msg msg;
        const char *cause;
        size_t len;
        uint8_t *bytes;

        if (!is_message_vector(v)) {
            evbuffer_free(buf);
            continue;
        }
        bytes = vector_bytes(v, &len);
        vmsg_init(&msg);
        for (size_t k = 0; k < len; k++) {
            enum wire_result r;

            evbuffer_add(buf, bytes + k, 1);
            r = wire_decode(buf, &lim, &msg, &cause);
            assert_int_equal(r, k + 1 < len ? WIRE_NEED_MORE : WIRE_DECODED);
        }
        assert_int_equal(evbuffer_get_length(buf), 0);
        check_msg(&msg, v);
        wire_msg_free(&msg);
        evbuffer_free(buf);
        free(bytes);
    }
}

/*
 * The message spread over many evbuffer chains (one reference chain per
 * piece), for several piece sizes: the decoder's walk crosses chains
 * inside every kind of field.
 */
static void
test_vectors_chains(void **state)
{
    static const size_t pieces[] = { 1, 2, 3, 5, 7, 13 };
    struct wire_limits lim;

    limits_wide(&lim);
    for (size_t i = 0; i < vectors->n; i++) {
        const struct jval *v = &vectors->items[i];
        size_t len;
        uint8_t *bytes;

        if (!is_message_vector(v))
            continue;
        bytes = vector_bytes(v, &len);
        for (size_t p = 0; p < sizeof pieces / sizeof pieces[0]; p++) {
            struct evbuffer *buf = evbuffer_new();
            struct wire_msg msg;

            for (size_t k = 0; k < len; k += pieces[p])
                evbuffer_add_reference(buf, bytes + k,
                    len - k < pieces[p] ? len - k : pieces[p], NULL, NULL);
            vmsg_init(&msg);
            decode_one(buf, v, &msg);
            wire_msg_free(&msg);
            evbuffer_free(buf);
        }
        free(bytes);
    }
}

/* bytes into buf as reference chains of piece bytes each (0: one chain). */
static void
add_in_pieces(struct evbuffer *buf, const uint8_t *bytes, size_t len, size_t piece)
{
    if (piece == 0) {
        evbuffer_add(buf, bytes, len);
        return;
    }
    for (size_t k = 0; k < len; k += piece)
        evbuffer_add_reference(buf, bytes + k, len - k < piece ? len - k : piece, NULL,
            NULL);
}

/*
 * Every message vector back to back, decoded by one wire_reader: each in
 * turn, then need-more. In one chain nothing is drained before
 * wire_reader_end; spread over chains, what a widening needs is drained
 * first. Either way the buffer is empty at the end.
 */
static void
test_reader_back_to_back(void **state)
{
    static const size_t pieces[] = { 0, 1, 7, 64 };
    struct wire_limits lim;
    uint8_t *all = NULL;
    size_t total = 0, n = 0;

    limits_wide(&lim);
    for (size_t i = 0; i < vectors->n; i++) {
        size_t len;
        uint8_t *bytes;

        if (!is_message_vector(&vectors->items[i]))
            continue;
        bytes = vector_bytes(&vectors->items[i], &len);
        assert_non_null(all = realloc(all, total + len + 1));
        memcpy(all + total, bytes, len);
        total += len;
        n++;
        free(bytes);
    }
    assert_true(n > 1);
    for (size_t p = 0; p < sizeof pieces / sizeof pieces[0]; p++) {
        struct evbuffer *buf = evbuffer_new();
        struct wire_reader rd;
        struct wire_msg msg;
        const char *cause = NULL;
        size_t sizes = 0;

        add_in_pieces(buf, all, total, pieces[p]);
        vmsg_init(&msg);
        wire_reader_begin(&rd, buf);
        decoded_by_ref = true;
        for (size_t i = 0; i < vectors->n; i++) {
            if (!is_message_vector(&vectors->items[i]))
                continue;
            assert_int_equal(wire_read(&rd, &lim, &msg, &cause), WIRE_DECODED);
            check_msg(&msg, &vectors->items[i]);
            sizes += rd.size;
        }
        decoded_by_ref = false;
        assert_int_equal(wire_read(&rd, &lim, &msg, &cause), WIRE_NEED_MORE);
        assert_int_equal(sizes, total);
        if (pieces[p] == 0)
            assert_int_equal(evbuffer_get_length(buf), total);
        assert_int_equal(wire_reader_end(&rd), 0);
        assert_int_equal(evbuffer_get_length(buf), 0);
        wire_msg_free(&msg);
        evbuffer_free(buf);
    }
    free(all);
}

/* Every proper prefix is need-more, consumes nothing, and is never an error. */
static void
test_vectors_truncations(void **state)
{
    struct wire_limits lim;

    limits_wide(&lim);
    for (size_t i = 0; i < vectors->n; i++) {
        const struct jval *v = &vectors->items[i];
        size_t len;
        uint8_t *bytes;

        if (!is_message_vector(v))
            continue;
        bytes = vector_bytes(v, &len);
        for (size_t k = 0; k < len; k++) {
            struct evbuffer *buf = evbuffer_new();
            struct wire_msg msg;
            const char *cause = NULL;

            add_in_pieces(buf, bytes, k, k % 3); /* one chain, or pieces of 1 or 2 */
            vmsg_init(&msg);
            if (wire_decode(buf, &lim, &msg, &cause) != WIRE_NEED_MORE) {
                fprintf(stderr, "%s: prefix %zu: %s\n", vector_name(v), k,
                    cause ? cause : "decoded");
                fail();
            }
            assert_int_equal(evbuffer_get_length(buf), k);
            assert_null(msg.store); /* nothing allocated for a partial */
            wire_msg_free(&msg);
            evbuffer_free(buf);
        }
        free(bytes);
    }
}

/* The tightest limits that still admit vector v. */
static void
vector_limits(const struct jval *v, size_t len, struct wire_limits *lim)
{
    const struct jval *fields = jget_type(v, "fields", J_OBJ);

    memset(lim, 0, sizeof *lim);
    lim->max_message = (uint32_t)len;
    for (size_t i = 0; i < fields->n; i++) {
        const char *k = fields->keys[i];
        const struct jval *f = &fields->items[i];

        if (str_field(&(struct wire_msg){ 0 }, k) != NULL && f->t == J_STR &&
            f->slen > lim->max_string)
            lim->max_string = (uint32_t)f->slen;
        if (strcmp(k, "entitlements") == 0 && f->t == J_ARR && f->n > lim->max_entitlements)
            lim->max_entitlements = (uint32_t)f->n;
        if (strcmp(k, "data_packets") != 0 || f->t != J_ARR)
            continue;
        lim->max_packets = (uint32_t)f->n;
        for (size_t p = 0; p < f->n; p++) {
            const struct jval *e = jget(&f->items[p], "entitlements");
            const struct jval *d = jget(&f->items[p], "data_hex");

            if (e->t == J_ARR && e->n > lim->max_entitlements)
                lim->max_entitlements = (uint32_t)e->n;
            if (d->t == J_STR && strlen(d->s) / 2 > lim->max_payload)
                lim->max_payload = (uint32_t)(strlen(d->s) / 2);
        }
    }
}

/* The error is the same whether the message lies in one chain or spans
 * many (the decoder then widens its window across them). */
static void
expect_error(const uint8_t *bytes, size_t len, const struct wire_limits *lim,
    const char *want_cause, const char *name)
{
    static const size_t pieces[] = { 0, 1, 3 };

    for (size_t p = 0; p < sizeof pieces / sizeof pieces[0]; p++) {
        struct evbuffer *buf = evbuffer_new();
        struct wire_msg msg;
        const char *cause = NULL;
        enum wire_result r;

        add_in_pieces(buf, bytes, len, pieces[p]);
        vmsg_init(&msg);
        r = wire_decode(buf, lim, &msg, &cause);
        if (r != WIRE_ERROR || cause == NULL || strstr(cause, want_cause) == NULL) {
            fprintf(stderr, "%s (pieces of %zu): want error \"%s\", got %d \"%s\"\n", name,
                pieces[p], want_cause, r, cause ? cause : "");
            fail();
        }
        assert_int_equal(evbuffer_get_length(buf), len);
        assert_null(msg.store);
        wire_msg_free(&msg);
        evbuffer_free(buf);
    }
}

/* Each limit at the vector's own size admits it; one less refuses it. */
static void
test_vectors_limits(void **state)
{
    size_t violations = 0;

    for (size_t i = 0; i < vectors->n; i++) {
        const struct jval *v = &vectors->items[i];
        struct wire_limits exact, lim;
        struct evbuffer *buf;
        struct wire_msg msg;
        size_t len;
        uint8_t *bytes;

        if (!is_message_vector(v))
            continue;
        bytes = vector_bytes(v, &len);
        vector_limits(v, len, &exact);
        buf = evbuffer_new();
        evbuffer_add(buf, bytes, len);
        vmsg_init(&msg);
        assert_int_equal(wire_decode(buf, &exact, &msg, NULL), WIRE_DECODED);
        check_msg(&msg, v);
        wire_msg_free(&msg);
        evbuffer_free(buf);

#define VIOLATE(field, text)                                                               \
    if (exact.field > 0) {                                                                 \
        lim = exact;                                                                       \
        lim.field--;                                                                       \
        expect_error(bytes, len, &lim, text, vector_name(v));                              \
        violations++;                                                                      \
    }
        VIOLATE(max_string, "string length");
        VIOLATE(max_payload, "payload length");
        VIOLATE(max_packets, "packet count");
        VIOLATE(max_entitlements, "entitlement count");
        VIOLATE(max_message, "message size");
#undef VIOLATE
        free(bytes);
    }
    assert_true(violations > 40);
}

/* All message vectors back to back in one buffer: one at a time, exactly. */
static void
test_back_to_back(void **state)
{
    struct evbuffer *buf = evbuffer_new();
    struct wire_limits lim;
    struct wire_msg msg;
    size_t total = 0, count = 0;

    limits_wide(&lim);
    for (int round = 0; round < 2; round++) {
        for (size_t i = 0; i < vectors->n; i++) {
            size_t len;
            uint8_t *bytes;

            if (!is_message_vector(&vectors->items[i]))
                continue;
            bytes = vector_bytes(&vectors->items[i], &len);
            evbuffer_add(buf, bytes, len);
            total += len;
            free(bytes);
        }
    }
    vmsg_init(&msg);
    for (int round = 0; round < 2; round++) {
        for (size_t i = 0; i < vectors->n; i++) {
            const struct jval *v = &vectors->items[i];
            size_t len;
            uint8_t *bytes;

            if (!is_message_vector(v))
                continue;
            bytes = vector_bytes(v, &len);
            assert_int_equal(wire_decode(buf, &lim, &msg, NULL), WIRE_DECODED);
            total -= len;
            assert_int_equal(evbuffer_get_length(buf), total);
            check_msg(&msg, v);
            free(bytes);
            count++;
        }
    }
    assert_int_equal(wire_decode(buf, &lim, &msg, NULL), WIRE_NEED_MORE);
    assert_true(count > 0);
    wire_msg_free(&msg);
    evbuffer_free(buf);
}

/*
 * A long stream of all message vectors whose chains end at arbitrary
 * points (as reads do): every message, also those spanning two or more
 * chains, decodes exactly as from one contiguous buffer, and the storage
 * grows in the middle of the stream when a bigger message comes.
 */
static void
test_stream_in_chains(void **state)
{
    static const size_t pieces[] = { 1, 7, 64, 97, 1000, 4096 };
    struct wire_limits lim;

    limits_wide(&lim);
    for (size_t p = 0; p < sizeof pieces / sizeof pieces[0]; p++) {
        struct evbuffer *all = evbuffer_new(), *buf = evbuffer_new();
        struct wire_msg msg;
        size_t total, count = 0;
        uint8_t *bytes;

        for (int round = 0; round < 20; round++) {
            for (size_t i = 0; i < vectors->n; i++) {
                size_t len;
                uint8_t *b;

                if (!is_message_vector(&vectors->items[i]))
                    continue;
                b = vector_bytes(&vectors->items[i], &len);
                evbuffer_add(all, b, len);
                free(b);
            }
        }
        total = evbuffer_get_length(all);
        bytes = malloc(total);
        assert_non_null(bytes);
        evbuffer_remove(all, bytes, total);
        add_in_pieces(buf, bytes, total, pieces[p]);
        vmsg_init(&msg);
        for (int round = 0; round < 20; round++) {
            for (size_t i = 0; i < vectors->n; i++) {
                const struct jval *v = &vectors->items[i];

                if (!is_message_vector(v))
                    continue;
                assert_int_equal(wire_decode(buf, &lim, &msg, NULL), WIRE_DECODED);
                check_msg(&msg, v);
                count++;
            }
        }
        assert_int_equal(evbuffer_get_length(buf), 0);
        assert_int_equal(wire_decode(buf, &lim, &msg, NULL), WIRE_NEED_MORE);
        assert_true(count > 20);
        wire_msg_free(&msg);
        free(bytes);
        evbuffer_free(all);
        evbuffer_free(buf);
    }
}

/* A walk that stops (need-more, error) leaves no half-built message. */
static void
test_stopped_walk_clears(void **state)
{
    /* ForwardedMulticastData: user "u", host "h", then the feed's length
     * and only part of it. */
    static const uint8_t part[] = { 8, 0, 0, 0, 1, 'u', 0, 0, 0, 1, 'h', 0, 0, 0, 4, 'f' };
    static const uint8_t note[] = { 4, 0, 0, 0, 1, 'N', 1 };
    struct evbuffer *buf = evbuffer_new();
    struct wire_limits lim;
    struct wire_msg msg;

    limits_wide(&lim);
    vmsg_init(&msg);
    evbuffer_add(buf, note, sizeof note);
    evbuffer_add(buf, part, sizeof part);
    assert_int_equal(wire_decode(buf, &lim, &msg, NULL), WIRE_DECODED);
    assert_string_equal(msg.feed.ptr, "N");
    assert_int_equal(wire_decode(buf, &lim, &msg, NULL), WIRE_NEED_MORE);
    assert_int_equal(evbuffer_get_length(buf), sizeof part);
    assert_int_equal(msg.user.len, 0);
    assert_string_equal(msg.user.ptr, "");
    assert_int_equal(msg.feed.len, 0);
    assert_string_equal(msg.feed.ptr, "");
    assert_false(msg.is_add);
    wire_msg_free(&msg);
    evbuffer_free(buf);
}

/* wire_read hands out the strings and packet data where they lie in the
 * buffer, and wire_decode copies them (its end drains the bytes). */
static void
test_read_by_reference(void **state)
{
    /* ForwardedMulticastData at 3: user, host, feed, topic, image, one
     * packet with no entitlements and 3 bytes of data. */
    static const uint8_t fm[] = { 8, 0, 0, 0, 1, 'u', 0, 0, 0, 1, 'h', 0, 0, 0, 2, 'f', 'd',
        0, 0, 0, 1, 't', 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 3, 'a', 'b', 'c' };
    struct evbuffer *buf = evbuffer_new();
    struct wire_reader rd;
    struct wire_limits lim;
    struct wire_msg msg;
    const uint8_t *base;

    limits_wide(&lim);
    vmsg_init(&msg);
    msg.version = WIRE_V3;
    evbuffer_add(buf, fm, sizeof fm);
    evbuffer_add(buf, fm, sizeof fm);
    base = evbuffer_pullup(buf, -1);
    wire_reader_begin(&rd, buf);
    for (size_t i = 0; i < 2; i++) {
        const uint8_t *at = base + i * sizeof fm;

        assert_int_equal(wire_read(&rd, &lim, &msg, NULL), WIRE_DECODED);
        assert_ptr_equal(msg.user.ptr, (const char *)at + 5);
        assert_ptr_equal(msg.feed.ptr, (const char *)at + 15);
        assert_ptr_equal(msg.topic.ptr, (const char *)at + 21);
        assert_int_equal(msg.feed.len, 2);
        assert_true(msg.is_image);
        assert_int_equal(msg.n_packets, 1);
        assert_ptr_equal(msg.packets[0].data, at + 35);
        assert_int_equal(msg.packets[0].len, 3);
    }
    assert_int_equal(wire_reader_end(&rd), 0);
    evbuffer_add(buf, fm, sizeof fm);
    base = evbuffer_pullup(buf, -1);
    assert_int_equal(wire_decode(buf, &lim, &msg, NULL), WIRE_DECODED);
    assert_true(msg.feed.ptr < (const char *)base ||
        msg.feed.ptr >= (const char *)base + sizeof fm);
    assert_string_equal(msg.feed.ptr, "fd");
    assert_string_equal(msg.topic.ptr, "t");
    assert_memory_equal(msg.packets[0].data, "abc", 3);
    wire_msg_free(&msg);
    evbuffer_free(buf);
}

/*
 * One msg decodes many messages: once the storage has grown to the largest,
 * it is neither moved nor grown again (no per-message allocation), and
 * fields of an earlier, different message type do not linger.
 */
static void
test_store_reuse(void **state)
{
    struct evbuffer *buf = evbuffer_new();
    struct wire_limits lim;
    struct wire_msg msg;
    void *store = NULL;
    size_t cap = 0;

    limits_wide(&lim);
    vmsg_init(&msg);
    for (int round = 0; round < 200; round++) {
        for (size_t i = 0; i < vectors->n; i++) {
            const struct jval *v = &vectors->items[i];
            size_t len;
            uint8_t *bytes;

            if (!is_message_vector(v))
                continue;
            bytes = vector_bytes(v, &len);
            evbuffer_add(buf, bytes, len);
            assert_int_equal(wire_decode(buf, &lim, &msg, NULL), WIRE_DECODED);
            check_msg(&msg, v);
            if (round > 0) {
                assert_ptr_equal(msg.store, store);
                assert_int_equal(msg.store_cap, cap);
            }
            free(bytes);
        }
        store = msg.store;
        cap = msg.store_cap;
    }
    wire_msg_free(&msg);
    assert_null(msg.store);
    assert_int_equal(msg.store_cap, 0);
    wire_msg_free(&msg); /* twice is harmless */
    evbuffer_free(buf);
}

static void
test_fields_cleared(void **state)
{
    /* A publish with two packets, then a notification request. */
    static const uint8_t pub[] = {
        1,
        0,
        0,
        0,
        1,
        'F',
        0,
        0,
        0,
        1,
        'T',
        1,
        0,
        0,
        0,
        1,
        0,
        0,
        0,
        1,
        0,
        0,
        0,
        7,
        0,
        0,
        0,
        1,
        'x',
    };
    static const uint8_t note[] = { 4, 0, 0, 0, 1, 'N', 1 };
    struct evbuffer *buf = evbuffer_new();
    struct wire_limits lim;
    struct wire_msg msg;

    limits_wide(&lim);
    vmsg_init(&msg);
    evbuffer_add(buf, pub, sizeof pub);
    evbuffer_add(buf, note, sizeof note);
    assert_int_equal(wire_decode(buf, &lim, &msg, NULL), WIRE_DECODED);
    assert_int_equal(msg.n_packets, 1);
    assert_int_equal(msg.packets[0].entitlements.v[0], 7);
    assert_int_equal(wire_decode(buf, &lim, &msg, NULL), WIRE_DECODED);
    assert_int_equal(msg.type, WIRE_NOTIFICATION_REQUEST);
    assert_string_equal(msg.feed.ptr, "N");
    assert_true(msg.is_add);
    assert_false(msg.is_image);
    assert_int_equal(msg.topic.len, 0);
    assert_string_equal(msg.topic.ptr, "");
    assert_int_equal(msg.n_packets, 0);
    assert_null(msg.packets);
    wire_msg_free(&msg);
    evbuffer_free(buf);
}

/* Whether the type's list (expected_fields) has key; the image slot is
 * is_image below 6 and content_type from 6 on. */
static bool
type_carries(int type, int version, const char *key)
{
    const char *slot = key;

    if (strcmp(key, "content_type") == 0 || strcmp(key, "is_image") == 0) {
        if (strcmp(key, version >= WIRE_V6 ? "content_type" : "is_image") != 0)
            return false;
        slot = "is_image";
    }
    for (const char *const *f = expected_fields[type]; *f != NULL; f++)
        if (strcmp(*f, slot) == 0)
            return true;
    return false;
}

/*
 * Each type's decoder writes its own fields and empties every other one:
 * a message whose every field holds something from before is decoded as
 * each type in turn, at 3 and at 6, by wire_read and by wire_decode.
 */
static void
test_unused_fields_emptied(void **state)
{
    static const char *const strs[] = { "user", "host", "feed", "topic", "content_type" };
    static const char *const bools[] = { "is_image", "is_add",
        "is_authorization_required" };
    static const int32_t stale_ints[] = { 5, 6 };
    static const struct wire_packet stale_packet = { { stale_ints, 2 },
        (const uint8_t *)"x", 1 };
    static const int32_t ents[] = { 1 };
    static const struct wire_packet packet = { { NULL, 0 }, (const uint8_t *)"data", 4 };
    struct evbuffer *buf = evbuffer_new();
    struct wire_limits lim;

    limits_wide(&lim);
    for (int version = WIRE_V3; version <= WIRE_V6; version += WIRE_V6 - WIRE_V3) {
        for (int type = WIRE_TYPE_MIN; type <= WIRE_TYPE_MAX; type++) {
            for (int by_ref = 0; by_ref < 2; by_ref++) {
                struct wire_msg in, msg;
                struct wire_reader rd;

                wire_msg_init(&in);
                in.type = (enum wire_type)type;
                in.version = version;
                in.user = in.host = in.feed = in.topic = (struct wire_str){ "n", 1 };
                in.content_type = (struct wire_str){ "c", 1 };
                memset(in.client_id, 0xab, sizeof in.client_id);
                in.is_image = in.is_add = in.auth_required = true;
                in.entitlements = (struct wire_ints){ ents, 1 };
                in.packets = &packet;
                in.n_packets = 1;
                assert_int_equal(wire_encode(buf, &in), 0);

                wire_msg_init(&msg);
                msg.version = version;
                msg.user = msg.host = msg.feed = msg.topic =
                    (struct wire_str){ "stale", 5 };
                msg.content_type = (struct wire_str){ "stale", 5 };
                memset(msg.client_id, 0xcd, sizeof msg.client_id);
                msg.is_image = msg.is_add = msg.auth_required = true;
                msg.entitlements = (struct wire_ints){ stale_ints, 2 };
                msg.packets = &stale_packet;
                msg.n_packets = 1;
                if (by_ref) {
                    wire_reader_begin(&rd, buf);
                    assert_int_equal(wire_read(&rd, &lim, &msg, NULL), WIRE_DECODED);
                } else {
                    assert_int_equal(wire_decode(buf, &lim, &msg, NULL), WIRE_DECODED);
                }
                assert_int_equal(msg.type, type);
                for (size_t i = 0; i < sizeof strs / sizeof *strs; i++) {
                    const struct wire_str *s = str_field(&msg, strs[i]);

                    assert_int_equal(s->len, type_carries(type, version, strs[i]));
                    if (s->len == 0)
                        assert_string_equal(s->ptr, "");
                    else
                        assert_memory_equal(s->ptr, i == 4 ? "c" : "n", 1);
                }
                for (size_t i = 0; i < sizeof bools / sizeof *bools; i++)
                    assert_int_equal(bool_field(&msg, bools[i]),
                        type_carries(type, version, bools[i]));
                for (size_t i = 0; i < sizeof msg.client_id; i++)
                    assert_int_equal(msg.client_id[i],
                        type_carries(type, version, "client_id") ? 0xab : 0);
                if (type_carries(type, version, "entitlements")) {
                    assert_int_equal(msg.entitlements.n, 1);
                    assert_int_equal(msg.entitlements.v[0], 1);
                } else {
                    assert_int_equal(msg.entitlements.n, 0);
                    assert_null(msg.entitlements.v);
                }
                if (type_carries(type, version, "data_packets")) {
                    assert_int_equal(msg.n_packets, 1);
                    assert_int_equal(msg.packets[0].entitlements.n, 0);
                    assert_memory_equal(msg.packets[0].data, "data", 4);
                } else {
                    assert_int_equal(msg.n_packets, 0);
                    assert_null(msg.packets);
                }
                if (by_ref)
                    assert_int_equal(wire_reader_end(&rd), 0);
                assert_int_equal(evbuffer_get_length(buf), 0);
                wire_msg_free(&msg);
            }
        }
    }
    evbuffer_free(buf);
}

/* Any non-zero bool byte is true; writers send 1. */
static void
test_bool_nonzero(void **state)
{
    static const uint8_t in[] = { 5, 0, 0, 0, 1, 'F', 0, 0, 0, 1, 'T', 0xff };
    static const uint8_t canon[] = { 5, 0, 0, 0, 1, 'F', 0, 0, 0, 1, 'T', 1 };
    struct evbuffer *buf = evbuffer_new(), *out = evbuffer_new();
    struct wire_limits lim;
    struct wire_msg msg;

    limits_wide(&lim);
    vmsg_init(&msg);
    for (unsigned b = 1; b < 256; b += 37) {
        uint8_t m[sizeof in];

        memcpy(m, in, sizeof in);
        m[sizeof m - 1] = (uint8_t)b;
        evbuffer_add(buf, m, sizeof m);
        assert_int_equal(wire_decode(buf, &lim, &msg, NULL), WIRE_DECODED);
        assert_true(msg.is_add);
        assert_int_equal(wire_encode(out, &msg), 0);
        assert_buffer_equals(out, canon, sizeof canon, "bool");
        evbuffer_drain(out, evbuffer_get_length(out));
    }
    wire_msg_free(&msg);
    evbuffer_free(buf);
    evbuffer_free(out);
}

/* --- malformed input --- */

static void
test_unknown_types(void **state)
{
    static const uint8_t types[] = { 0, 10, 42, 255 };
    struct wire_limits lim;

    limits_wide(&lim);
    for (size_t i = 0; i < sizeof types; i++) {
        uint8_t m[8] = { types[i], 0, 0, 0, 1, 'F', 1, 0 };
        char want[64];

        snprintf(want, sizeof want, "unknown message type %u", (unsigned)types[i]);
        expect_error(m, sizeof m, &lim, want, "unknown type");
        expect_error(m, 1, &lim, want, "unknown type alone");
    }
}

static void
test_negative_lengths(void **state)
{
    /* MulticastData: feed, topic, isImage, 1 packet {ents, data}. */
    static const uint8_t base[] = {
        1, 0, 0, 0, 1, 'F', 0, 0, 0, 1, 'T', 1, 0, 0, 0, 1, /* packet count at 12 */
        0, 0, 0, 1, 0, 0, 0, 9,                             /* entitlement count at 16 */
        0, 0, 0, 2, 'h', 'i',                               /* payload length at 24 */
    };
    static const struct {
        size_t at;
        const char *cause;
    } cases[] = {
        { 1, "negative string length" },
        { 6, "negative string length" },
        { 12, "negative packet count" },
        { 16, "negative entitlement count" },
        { 24, "negative payload length" },
    };
    static const uint8_t negs[][4] = {
        { 0xff, 0xff, 0xff, 0xff },
        { 0x80, 0, 0, 0 },
        { 0xff, 0, 0, 0 },
    };
    struct wire_limits lim;
    struct evbuffer *buf = evbuffer_new();
    struct wire_msg msg;

    limits_wide(&lim);
    vmsg_init(&msg);
    evbuffer_add(buf, base, sizeof base);
    assert_int_equal(wire_decode(buf, &lim, &msg, NULL), WIRE_DECODED);
    assert_int_equal(msg.packets[0].len, 2);
    wire_msg_free(&msg);
    evbuffer_free(buf);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        for (size_t n = 0; n < sizeof negs / sizeof negs[0]; n++) {
            uint8_t m[sizeof base];

            memcpy(m, base, sizeof base);
            memcpy(m + cases[i].at, negs[n], 4);
            /* Refused as soon as the length has arrived. */
            expect_error(m, sizeof m, &lim, cases[i].cause, "negative");
            expect_error(m, cases[i].at + 4, &lim, cases[i].cause, "negative, prefix");
        }
    }
    /* The authorization response's own entitlement set. */
    {
        uint8_t m[1 + 16 + 5 + 5 + 1 + 4] = { 7 };

        memcpy(m + 17, "\0\0\0\1F\0\0\0\1T\1\xff\xff\xff\xfe", 15);
        expect_error(m, sizeof m, &lim, "negative entitlement count -2", "auth response");
    }
}

/* Limits are checked when a length arrives, before its bytes do. */
static void
test_limits_before_complete(void **state)
{
    /* SubscriptionRequest whose feed claims 99999 bytes. */
    static const uint8_t big[] = { 5, 0, 0x01, 0x86, 0x9f, 'a', 'b' };
    /* Publish claiming 1000 packets: at least 8000 more bytes. */
    static const uint8_t many[] = { 1, 0, 0, 0, 1, 'F', 0, 0, 0, 1, 'T', 1, 0, 0, 0x03,
        0xe8 };
    struct wire_limits lim;

    limits_wide(&lim);
    expect_error(big, sizeof big, &lim, "string length 99999 over limit 4096",
        "big string");
    /* Within the string limit but not the message limit. */
    lim.max_string = 1u << 20;
    lim.max_message = 1000;
    expect_error(big, 5, &lim, "message size at least 100004 over limit 1000",
        "big message");
    limits_wide(&lim);
    lim.max_packets = 999;
    expect_error(many, sizeof many, &lim, "packet count 1000 over limit 999",
        "many packets");
    limits_wide(&lim);
    lim.max_message = 4000;
    expect_error(many, sizeof many, &lim, "message size", "many packets' size");
    /* Within every limit: simply incomplete. */
    limits_wide(&lim);
    {
        struct evbuffer *buf = evbuffer_new();
        struct wire_msg msg;

        vmsg_init(&msg);
        evbuffer_add(buf, many, sizeof many);
        assert_int_equal(wire_decode(buf, &lim, &msg, NULL), WIRE_NEED_MORE);
        assert_int_equal(evbuffer_get_length(buf), sizeof many);
        evbuffer_drain(buf, sizeof many);
        lim.max_string = 1u << 20;
        evbuffer_add(buf, big, sizeof big);
        assert_int_equal(wire_decode(buf, &lim, &msg, NULL), WIRE_NEED_MORE);
        assert_int_equal(evbuffer_get_length(buf), sizeof big);
        wire_msg_free(&msg);
        evbuffer_free(buf);
    }
}

/* A large payload spread over many chains, and its limit. */
static void
test_large_payload(void **state)
{
    const size_t n = 300000, chunk = 4096;
    uint8_t head[] = {
        8,
        0,
        0,
        0,
        1,
        'u',
        0,
        0,
        0,
        1,
        'h',
        0,
        0,
        0,
        1,
        'F',
        0,
        0,
        0,
        1,
        'T',
        0,
        0,
        0,
        0,
        1,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
    };
    uint8_t *data = malloc(n);
    struct evbuffer *buf = evbuffer_new(), *out = evbuffer_new();
    struct wire_limits lim;
    struct wire_msg msg;
    const char *cause;

    assert_non_null(data);
    for (size_t i = 0; i < n; i++)
        data[i] = (uint8_t)(i * 7 + (i >> 9));
    head[sizeof head - 4] = (uint8_t)(n >> 24);
    head[sizeof head - 3] = (uint8_t)(n >> 16);
    head[sizeof head - 2] = (uint8_t)(n >> 8);
    head[sizeof head - 1] = (uint8_t)n;
    limits_wide(&lim);
    vmsg_init(&msg);
    evbuffer_add(buf, head, sizeof head);
    for (size_t k = 0; k < n; k += chunk) {
        assert_int_equal(wire_decode(buf, &lim, &msg, &cause), WIRE_NEED_MORE);
        evbuffer_add_reference(buf, data + k, n - k < chunk ? n - k : chunk, NULL, NULL);
    }
    lim.max_payload = (uint32_t)n - 1;
    assert_int_equal(wire_decode(buf, &lim, &msg, &cause), WIRE_ERROR);
    assert_non_null(strstr(cause, "payload length 300000 over limit 299999"));
    lim.max_payload = (uint32_t)n;
    assert_int_equal(wire_decode(buf, &lim, &msg, &cause), WIRE_DECODED);
    assert_int_equal(evbuffer_get_length(buf), 0);
    assert_int_equal(msg.n_packets, 1);
    assert_int_equal(msg.packets[0].len, n);
    assert_memory_equal(msg.packets[0].data, data, n);
    assert_int_equal(msg.packets[0].entitlements.n, 0);
    assert_int_equal(wire_encode(out, &msg), 0);
    assert_int_equal(evbuffer_get_length(out), sizeof head + n);
    wire_msg_free(&msg);
    evbuffer_free(buf);
    evbuffer_free(out);
    free(data);
}

/* Strings may hold NUL bytes; they are still terminated after len. */
static void
test_string_with_nul(void **state)
{
    static const uint8_t m[] = { 4, 0, 0, 0, 3, 'a', 0, 'b', 0 };
    struct evbuffer *buf = evbuffer_new();
    struct wire_limits lim;
    struct wire_msg msg;

    limits_wide(&lim);
    vmsg_init(&msg);
    evbuffer_add(buf, m, sizeof m);
    assert_int_equal(wire_decode(buf, &lim, &msg, NULL), WIRE_DECODED);
    assert_int_equal(msg.feed.len, 3);
    assert_memory_equal(msg.feed.ptr, "a\0b", 4);
    assert_false(msg.is_add);
    wire_msg_free(&msg);
    evbuffer_free(buf);
}

/* What cannot be represented is refused, and nothing is appended. */
static void
test_encode_refusals(void **state)
{
    struct evbuffer *out = evbuffer_new();
    struct wire_packet pk = { { NULL, 0 }, NULL, 0 };
    struct wire_msg msg;

    vmsg_init(&msg);
    msg.type = 0;
    assert_int_equal(wire_encode(out, &msg), -1);
    assert_int_equal(wire_encoded_size(&msg), 0);
    msg.type = 10;
    assert_int_equal(wire_encode(out, &msg), -1);

    vmsg_init(&msg);
    msg.type = WIRE_SUBSCRIPTION_REQUEST;
    msg.topic.ptr = "t";
    msg.topic.len = 0x80000000u;
    assert_int_equal(wire_encode(out, &msg), -1);
    assert_int_equal(wire_encoded_size(&msg), 0);
    msg.topic.ptr = NULL;
    msg.topic.len = 1;
    assert_int_equal(wire_encode(out, &msg), -1);
    {
        uint8_t room[64];

        assert_null(wire_encode_into(room, room + sizeof(room), &msg));
    }
    /* Fields the type does not use are ignored. */
    msg.topic.ptr = "t";
    msg.user.len = 0x80000000u;
    assert_int_equal(wire_encoded_size(&msg), 1 + 4 + 4 + 1 + 1);
    assert_int_equal(wire_encode(out, &msg), 0);
    evbuffer_drain(out, evbuffer_get_length(out));

    vmsg_init(&msg);
    msg.type = WIRE_MULTICAST_DATA;
    msg.n_packets = 1;
    assert_int_equal(wire_encode(out, &msg), -1); /* packets NULL */
    msg.packets = &pk;
    pk.entitlements.n = 2;
    assert_int_equal(wire_encode(out, &msg), -1); /* entitlements NULL */
    pk.entitlements.n = 0;
    pk.len = 5;
    assert_int_equal(wire_encode(out, &msg), -1); /* data NULL */
    pk.len = 0;
    assert_int_equal(wire_encode(out, &msg), 0);
    assert_int_equal(evbuffer_get_length(out), 1 + 4 + 4 + 1 + 4 + 4 + 4);
    evbuffer_drain(out, evbuffer_get_length(out));

    vmsg_init(&msg);
    msg.type = WIRE_AUTHORIZATION_RESPONSE;
    msg.entitlements.n = 1;
    assert_int_equal(wire_encode(out, &msg), -1);
    assert_int_equal(evbuffer_get_length(out), 0);
    evbuffer_free(out);
}

static void
test_type_names(void **state)
{
    assert_string_equal(wire_type_name(WIRE_MULTICAST_DATA), "MulticastData");
    assert_string_equal(wire_type_name(WIRE_FORWARDED_UNICAST), "ForwardedUnicastData");
    assert_string_equal(wire_type_name(0), "unknown");
    assert_string_equal(wire_type_name(10), "unknown");
    assert_string_equal(wire_type_name(-1), "unknown");
}

static void
test_limits_default(void **state)
{
    struct wire_limits lim;

    memset(&lim, 0, sizeof lim);
    wire_limits_default(&lim);
    assert_int_equal(lim.max_string, WIRE_DEFAULT_MAX_STRING);
    assert_int_equal(lim.max_payload, WIRE_DEFAULT_MAX_PAYLOAD);
    assert_int_equal(lim.max_packets, WIRE_DEFAULT_MAX_PACKETS);
    assert_int_equal(lim.max_entitlements, WIRE_DEFAULT_MAX_ENTITLEMENTS);
    assert_int_equal(lim.max_message, WIRE_DEFAULT_MAX_MESSAGE);
}

/* --- authentication payloads --- */

static enum wire_auth_method
auth_method(const struct jval *v)
{
    const char *t = jget_type(v, "type", J_STR)->s;

    if (strcmp(t, "auth-null") == 0)
        return WIRE_AUTH_NONE;
    if (strcmp(t, "auth-password") == 0)
        return WIRE_AUTH_BASIC;
    assert_string_equal(t, "auth-jwt");
    return WIRE_AUTH_TOKEN;
}

static void
check_auth_str(const char *got, const struct jval *fields, const char *key)
{
    const struct jval *want = jget(fields, key);

    if (want == NULL || want->t == J_NULL || want->slen == 0) {
        assert_null(got);
        return;
    }
    assert_non_null(got);
    assert_int_equal(strlen(got), want->slen);
    assert_string_equal(got, want->s);
}

static void
check_auth(const struct wire_auth *a, const struct jval *v)
{
    const struct jval *fields = jget_type(v, "fields", J_OBJ);
    static const char *const basic[] = { "username", "password", "impersonating",
        "forwarded_for", "application" };
    static const char *const token[] = { "token", "impersonating", "forwarded_for",
        "application" };
    size_t extra = vector_version >= WIRE_V4 ? 1 : 0; /* application */

    assert_int_equal(a->method, auth_method(v));
    switch (a->method) {
    case WIRE_AUTH_NONE:
        assert_int_equal(fields->n, 0);
        break;
    case WIRE_AUTH_BASIC:
        assert_int_equal(fields->n, 4 + extra);
        for (size_t i = 0; i < 4 + extra; i++)
            assert_string_equal(fields->keys[i], basic[i]);
        assert_null(a->token);
        break;
    case WIRE_AUTH_TOKEN:
        assert_int_equal(fields->n, 3 + extra);
        for (size_t i = 0; i < 3 + extra; i++)
            assert_string_equal(fields->keys[i], token[i]);
        assert_null(a->username);
        assert_null(a->password);
        break;
    }
    check_auth_str(a->username, fields, "username");
    check_auth_str(a->password, fields, "password");
    check_auth_str(a->token, fields, "token");
    check_auth_str(a->impersonating, fields, "impersonating");
    check_auth_str(a->forwarded_for, fields, "forwarded_for");
    check_auth_str(a->application, fields, "application");
}

static const char *
auth_field(const struct jval *v, const char *key)
{
    const struct jval *f = jget(jget(v, "fields"), key);

    return f != NULL && f->t == J_STR ? f->s : NULL;
}

static void
test_auth_vectors(void **state)
{
    struct wire_limits lim;
    size_t count = 0;

    limits_wide(&lim);
    for (size_t i = 0; i < vectors->n; i++) {
        const struct jval *v = &vectors->items[i];
        struct evbuffer *buf, *out;
        struct wire_auth a, enc;
        const char *cause = NULL;
        size_t len;
        uint8_t *bytes;

        if (!is_auth_vector(v))
            continue;
        count++;
        bytes = vector_bytes(v, &len);
        /* Encode from the listed fields. */
        memset(&enc, 0, sizeof enc);
        enc.method = auth_method(v);
        enc.version = vector_version;
        enc.username = auth_field(v, "username");
        enc.password = auth_field(v, "password");
        enc.token = auth_field(v, "token");
        enc.impersonating = auth_field(v, "impersonating");
        enc.forwarded_for = auth_field(v, "forwarded_for");
        enc.application = auth_field(v, "application");
        out = evbuffer_new();
        assert_int_equal(wire_encode_auth(out, &enc), 0);
        assert_buffer_equals(out, bytes, len, vector_name(v));
        /* Decode, whole and byte by byte. */
        buf = evbuffer_new();
        evbuffer_add(buf, bytes, len);
        assert_int_equal(wire_decode_auth_version(buf, vector_version, enc.method, &lim, &a,
                             &cause),
            WIRE_DECODED);
        assert_int_equal(evbuffer_get_length(buf), 0);
        check_auth(&a, v);
        /* Re-encoding the decoded payload gives the same bytes. */
        evbuffer_drain(out, evbuffer_get_length(out));
        assert_int_equal(wire_encode_auth(out, &a), 0);
        assert_buffer_equals(out, bytes, len, vector_name(v));
        wire_auth_free(&a);
        wire_auth_free(&a);
        for (size_t k = 0; k < len; k++) {
            evbuffer_add(buf, bytes + k, 1);
            assert_int_equal(wire_decode_auth_version(buf, vector_version, enc.method, &lim,
                                 &a, &cause),
                k + 1 < len ? WIRE_NEED_MORE : WIRE_DECODED);
            if (k + 1 < len)
                assert_int_equal(evbuffer_get_length(buf), k + 1);
        }
        check_auth(&a, v);
        wire_auth_free(&a);
        evbuffer_free(buf);
        evbuffer_free(out);
        free(bytes);
    }
    assert_int_equal(count, 5);
}

static void
test_auth_malformed(void **state)
{
    static const uint8_t neg[] = { 0, 0, 0, 1, 'u', 0xff, 0xff, 0xff, 0xff };
    static const uint8_t big[] = { 0, 0, 0x10, 0x01 };
    struct evbuffer *buf = evbuffer_new();
    struct wire_limits lim;
    struct wire_auth a;
    const char *cause = NULL;

    limits_wide(&lim);
    evbuffer_add(buf, neg, sizeof neg);
    assert_int_equal(wire_decode_auth(buf, WIRE_AUTH_BASIC, &lim, &a, &cause), WIRE_ERROR);
    assert_non_null(strstr(cause, "negative string length -1"));
    assert_non_null(strstr(cause, "password"));
    assert_int_equal(evbuffer_get_length(buf), sizeof neg);
    assert_null(a.username);
    evbuffer_drain(buf, sizeof neg);

    evbuffer_add(buf, big, sizeof big);
    assert_int_equal(wire_decode_auth(buf, WIRE_AUTH_TOKEN, &lim, &a, &cause), WIRE_ERROR);
    assert_non_null(strstr(cause, "string length 4097 over limit 4096"));
    lim.max_string = 8192;
    lim.max_message = 4000;
    assert_int_equal(wire_decode_auth(buf, WIRE_AUTH_TOKEN, &lim, &a, &cause), WIRE_ERROR);
    assert_non_null(strstr(cause, "message size"));
    lim.max_message = 1u << 20;
    assert_int_equal(wire_decode_auth(buf, WIRE_AUTH_TOKEN, &lim, &a, &cause),
        WIRE_NEED_MORE);
    assert_int_equal(evbuffer_get_length(buf), sizeof big);

    /* NONE reads nothing; an unknown method is an error either way. */
    assert_int_equal(wire_decode_auth(buf, WIRE_AUTH_NONE, &lim, &a, &cause), WIRE_DECODED);
    assert_int_equal(evbuffer_get_length(buf), sizeof big);
    assert_int_equal(wire_decode_auth(buf, (enum wire_auth_method)7, &lim, &a, &cause),
        WIRE_ERROR);
    memset(&a, 0, sizeof a);
    a.method = (enum wire_auth_method)7;
    assert_int_equal(wire_encode_auth(buf, &a), -1);
    assert_int_equal(evbuffer_get_length(buf), sizeof big);
    evbuffer_free(buf);
}

/* --- what changes between versions, by hand --- */

/* The same publish at each version: the image slot is a byte below 6 and
 * a string from 6 on, and a message decodes only at its own layout. */
static void
test_image_slot_by_version(void **state)
{
    static const uint8_t v3[] = { 1, 0, 0, 0, 1, 'F', 0, 0, 0, 1, 'T', 1, 0, 0, 0, 0 };
    static const uint8_t v6[] = { 1, 0, 0, 0, 1, 'F', 0, 0, 0, 1, 'T', 0, 0, 0, 4, 't', 'e',
        'x', 't', 0, 0, 0, 0 };
    static const int versions[] = { WIRE_V3, WIRE_V4, WIRE_V5, WIRE_V6 };
    struct evbuffer *out = evbuffer_new();
    struct wire_limits lim;
    struct wire_msg m, got;
    const char *cause = NULL;

    limits_wide(&lim);
    for (size_t i = 0; i < sizeof versions / sizeof versions[0]; i++) {
        bool six = versions[i] >= WIRE_V6;

        wire_msg_init(&m);
        m.version = versions[i];
        m.type = WIRE_MULTICAST_DATA;
        m.feed = (struct wire_str){ "F", 1 };
        m.topic = (struct wire_str){ "T", 1 };
        m.is_image = true;
        m.content_type = (struct wire_str){ "text", 4 };
        assert_int_equal(wire_encode(out, &m), 0);
        assert_buffer_equals(out, six ? v6 : v3, six ? sizeof v6 : sizeof v3, "image slot");
        wire_msg_init(&got);
        got.version = versions[i];
        assert_int_equal(wire_decode(out, &lim, &got, NULL), WIRE_DECODED);
        assert_int_equal(got.version, versions[i]);
        assert_int_equal(got.is_image, !six);
        assert_int_equal(got.content_type.len, six ? 4 : 0);
        assert_string_equal(got.content_type.ptr, six ? "text" : "");
        wire_msg_free(&got);
    }
    /* Version 3 bytes read at 6: the image byte starts a content type
     * length of 16 MiB, a decode error (what a version mismatch looks
     * like), never wrong data. */
    wire_msg_init(&got);
    got.version = WIRE_V6;
    evbuffer_add(out, v3, sizeof v3);
    assert_int_equal(wire_decode(out, &lim, &got, &cause), WIRE_ERROR);
    assert_non_null(strstr(cause, "string length 16777216 over limit"));
    assert_non_null(strstr(cause, "contentType"));
    evbuffer_drain(out, evbuffer_get_length(out));
    /* A zeroed message is a version 3 one. */
    memset(&m, 0, sizeof m);
    m.type = WIRE_MULTICAST_DATA;
    m.is_image = true;
    assert_int_equal(wire_encoded_size(&m), 1 + 4 + 4 + 1 + 4);
    wire_msg_free(&got);
    evbuffer_free(out);
    assert_true(wire_version_valid(3) && wire_version_valid(4) && wire_version_valid(5) &&
        wire_version_valid(6));
    assert_false(wire_version_valid(0) || wire_version_valid(2) || wire_version_valid(7));
}

/* The content type is bounded by max_string like every other string. */
static void
test_content_type_limit(void **state)
{
    static const uint8_t v6[] = { 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 'F', 0, 0, 0, 1,
        'T', 0, 0, 0, 5, 'i', 'm', 'a', 'g', 'e', 0, 0, 0, 0 };
    struct wire_limits lim;

    limits_wide(&lim);
    lim.max_string = 4;
    vector_version = WIRE_V6;
    expect_error(v6, sizeof v6, &lim,
        "string length 5 over limit 4 "
        "(ForwardedMulticastData contentType)",
        "content type limit");
    vector_version = WIRE_V3;
}

/* From 4 on a value with ';' cannot be sent: refused, nothing appended. */
static void
test_auth_semicolon(void **state)
{
    struct evbuffer *out = evbuffer_new();
    struct wire_auth a = { .method = WIRE_AUTH_BASIC,
        .version = WIRE_V4,
        .username = "gw",
        .password = "se;cret" };
    const char *cause = NULL;

    assert_int_equal(wire_auth_check(&a, &cause), -1);
    assert_non_null(strstr(cause, "Password contains ';'"));
    assert_non_null(strstr(cause, "bus protocol 4"));
    assert_int_equal(wire_encode_auth(out, &a), -1);
    assert_int_equal(evbuffer_get_length(out), 0);
    a.version = WIRE_V6;
    a.password = "ok";
    a.application = "app;x";
    assert_int_equal(wire_auth_check(&a, &cause), -1);
    assert_non_null(strstr(cause, "Application contains ';'"));
    a.method = WIRE_AUTH_TOKEN;
    a.application = NULL;
    a.token = "t;t";
    assert_int_equal(wire_auth_check(&a, &cause), -1);
    assert_non_null(strstr(cause, "Token"));
    /* At 3 every string is counted, so ';' is fine; and the application
     * is not sent at all. */
    a.version = WIRE_V3;
    a.application = "x;y";
    assert_int_equal(wire_auth_check(&a, &cause), 0);
    assert_int_equal(wire_encode_auth(out, &a), 0);
    assert_int_equal(evbuffer_get_length(out), 4 + 3 + 4 + 4);
    evbuffer_free(out);
}

/* wire_bytes_eq against memcmp at every length its paths cover (the
 * byte loop, the 4- and 8-byte overlapping loads, memcmp), with one byte
 * changed at each place; the strings end where the allocation ends, so
 * ASan sees a load past n. */
static void
test_bytes_eq(void **state)
{
    (void)state;
    for (size_t n = 0; n <= 40; n++) {
        char *a = malloc(n > 0 ? n : 1), *b = malloc(n > 0 ? n : 1);

        assert_non_null(a);
        assert_non_null(b);
        for (size_t i = 0; i < n; i++)
            a[i] = b[i] = (char)('a' + i % 26);
        assert_true(wire_bytes_eq(a, b, n));
        for (size_t i = 0; i < n; i++) {
            b[i] ^= 0x20;
            assert_false(wire_bytes_eq(a, b, n));
            assert_false(wire_bytes_eq(b, a, n));
            b[i] ^= 0x20;
        }
        assert_true(wire_bytes_eq(a, b, n));
        free(a);
        free(b);
    }
}

/* A connection string the distributor would refuse is refused here too. */
static void
test_connection_string_malformed(void **state)
{
    static const struct {
        enum wire_auth_method method;
        const char *text, *cause;
    } cases[] = {
        { WIRE_AUTH_BASIC, "Username=u;Password=p;", "empty part" },
        { WIRE_AUTH_BASIC, "Username=u;;Password=p", "empty part" },
        { WIRE_AUTH_BASIC, "Username=u;Password", "without '='" },
        { WIRE_AUTH_BASIC, "Username=u;Username=v;Password=p", "repeated key Username" },
        { WIRE_AUTH_BASIC, "Username=u", "has no Password" },
        { WIRE_AUTH_BASIC, "username=u;Password=p", "unexpected key \"username\"" },
        { WIRE_AUTH_BASIC, "Token=t;Username=u;Password=p", "unexpected key \"Token\"" },
        { WIRE_AUTH_TOKEN, "Token=t;Password=p", "unexpected key \"Password\"" },
        { WIRE_AUTH_TOKEN, "Application=a", "has no Token" },
        { WIRE_AUTH_TOKEN, "", "empty part" },
    };
    struct evbuffer *buf = evbuffer_new();
    struct wire_limits lim;
    struct wire_auth a;
    const char *cause = NULL;

    limits_wide(&lim);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint32_t n = (uint32_t)strlen(cases[i].text);
        uint8_t len[4] = { (uint8_t)(n >> 24), (uint8_t)(n >> 16), (uint8_t)(n >> 8),
            (uint8_t)n };

        evbuffer_add(buf, len, 4);
        evbuffer_add(buf, cases[i].text, n);
        cause = NULL;
        assert_int_equal(wire_decode_auth_version(buf, WIRE_V4, cases[i].method, &lim, &a,
                             &cause),
            WIRE_ERROR);
        if (cause == NULL || strstr(cause, cases[i].cause) == NULL) {
            fprintf(stderr, "\"%s\": want \"%s\", got \"%s\"\n", cases[i].text,
                cases[i].cause, cause ? cause : "");
            fail();
        }
        assert_int_equal(evbuffer_get_length(buf), 4 + n); /* nothing taken */
        assert_null(a.username);
        assert_null(a.token);
        assert_null(a.application);
        evbuffer_drain(buf, evbuffer_get_length(buf));
    }
    evbuffer_free(buf);
}

int
main(void)
{
    /* Run at each version, against that version's vectors. */
    const struct CMUnitTest vector_tests[] = {
        cmocka_unit_test(test_vectors_decode),
        cmocka_unit_test(test_vectors_encode),
        cmocka_unit_test(test_vectors_bytewise),
        cmocka_unit_test(test_vectors_chains),
        cmocka_unit_test(test_reader_back_to_back),
        cmocka_unit_test(test_read_by_reference),
        cmocka_unit_test(test_vectors_truncations),
        cmocka_unit_test(test_vectors_limits),
        cmocka_unit_test(test_back_to_back),
        cmocka_unit_test(test_stream_in_chains),
        cmocka_unit_test(test_store_reuse),
        cmocka_unit_test(test_auth_vectors),
    };
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fields_cleared),
        cmocka_unit_test(test_unused_fields_emptied),
        cmocka_unit_test(test_stopped_walk_clears),
        cmocka_unit_test(test_bool_nonzero),
        cmocka_unit_test(test_unknown_types),
        cmocka_unit_test(test_negative_lengths),
        cmocka_unit_test(test_limits_before_complete),
        cmocka_unit_test(test_large_payload),
        cmocka_unit_test(test_string_with_nul),
        cmocka_unit_test(test_encode_refusals),
        cmocka_unit_test(test_type_names),
        cmocka_unit_test(test_limits_default),
        cmocka_unit_test(test_auth_malformed),
        cmocka_unit_test(test_image_slot_by_version),
        cmocka_unit_test(test_content_type_limit),
        cmocka_unit_test(test_auth_semicolon),
        cmocka_unit_test(test_connection_string_malformed),
        cmocka_unit_test(test_bytes_eq),
    };
    int failed = 0;

    failed +=
        cmocka_run_group_tests_name("wire-v3 vectors", vector_tests, load_v3, free_vectors);
    failed +=
        cmocka_run_group_tests_name("wire-v4 vectors", vector_tests, load_v4, free_vectors);
    failed +=
        cmocka_run_group_tests_name("wire-v6 vectors", vector_tests, load_v6, free_vectors);
    failed += cmocka_run_group_tests_name("wire", tests, NULL, NULL);
    return failed;
}
