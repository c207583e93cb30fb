/*
 * busgate sub, notify and authorize: what arrives, printed (payloads as
 * text, hex or base64), and the answers of an authorizer.
 */
#include <event2/buffer.h>
#include <openssl/evp.h>

#include "busgate-int.h"
#include "lineproto.h"
#include "util.h"

/* Valid UTF-8 that is still a control or a line break to a reader: the
 * C1 controls U+0080..U+009F (NEL, the 8-bit CSI of terminals) and the
 * line and paragraph separators U+2028, U+2029. */
static bool
is_utf8_control(const uint8_t *p, size_t k)
{
    return (k == 2 && p[0] == 0xc2 && p[1] < 0xa0) ||
        (k == 3 && p[0] == 0xe2 && p[1] == 0x80 && (p[2] == 0xa8 || p[2] == 0xa9));
}

/* A payload as one line of text: UTF-8 as is; backslash, control bytes
 * (C1 and U+2028/9 too, byte by byte) and invalid UTF-8 as C escapes, so
 * every packet stays on its line for Unicode-aware readers as well. */
static void
put_text(FILE *f, const uint8_t *p, size_t n)
{
    size_t i = 0, k;

    while (i < n) {
        uint8_t ch = p[i];

        if (ch >= 0x20 && ch < 0x7f && ch != '\\') {
            putc_unlocked(ch, f);
            i++;
        } else if (ch >= 0x80 && (k = utf8_seq_len(p + i, n - i)) > 0 &&
            !is_utf8_control(p + i, k)) {
            fwrite(p + i, 1, k, f);
            i += k;
        } else {
            switch (ch) {
            case '\\':
                fputs("\\\\", f);
                break;
            case '\n':
                fputs("\\n", f);
                break;
            case '\r':
                fputs("\\r", f);
                break;
            case '\t':
                fputs("\\t", f);
                break;
            default:
                fprintf(f, "\\x%02x", ch);
                break;
            }
            i++;
        }
    }
}

static void
put_hex(FILE *f, const uint8_t *p, size_t n)
{
    static const char digits[] = "0123456789abcdef";

    for (size_t i = 0; i < n; i++) {
        putc_unlocked(digits[p[i] >> 4], f);
        putc_unlocked(digits[p[i] & 15], f);
    }
}

static void
put_base64(FILE *f, const uint8_t *p, size_t n)
{
    unsigned char buf[4 * 768 / 3 + 1];

    /* Whole 3-byte groups per call, so the pieces join into one encoding. */
    while (n > 0) {
        size_t k = n < 768 ? n : 768;
        int m = EVP_EncodeBlock(buf, p, (int)k);

        fwrite(buf, 1, (size_t)m, f);
        p += k;
        n -= k;
    }
}

static void
put_payload(FILE *f, enum payload_form form, const uint8_t *p, size_t n)
{
    switch (form) {
    case FORM_TEXT:
        put_text(f, p, n);
        break;
    case FORM_HEX:
        put_hex(f, p, n);
        break;
    case FORM_BASE64:
        put_base64(f, p, n);
        break;
    }
}

/* A name as the protocol writes it (%-escapes, "" when empty): one word. */
static void
put_name(const char *p, size_t n)
{
    static struct evbuffer *scratch; /* reused; freed at exit */

    if (scratch == NULL && (scratch = evbuffer_new()) == NULL)
        cli_fail(EXIT_NODAEMON, "out of memory");
    evbuffer_drain(scratch, evbuffer_get_length(scratch));
    if (lp_put_name(scratch, p, n) < 0)
        cli_fail(EXIT_NODAEMON, "out of memory");
    fwrite(evbuffer_pullup(scratch, -1), 1, evbuffer_get_length(scratch), stdout);
}

static void
put_ents(const struct bg_packet *pk)
{
    if (pk->n_entitlements == 0) {
        putc_unlocked('-', stdout);
        return;
    }
    printf("%" PRId32, pk->entitlements[0]);
    for (size_t i = 1; i < pk->n_entitlements; i++)
        printf(",%" PRId32, pk->entitlements[i]);
}

/* "FEED TOPIC USER HOST image|delta [type=CT] " (a content type only at
 * bus protocol 6, as the DATA line has it) */
static void
put_data_prefix(const struct bg_event *ev)
{
    put_name(ev->feed, ev->feed_len);
    putc_unlocked(' ', stdout);
    put_name(ev->topic, ev->topic_len);
    putc_unlocked(' ', stdout);
    put_name(ev->user, ev->user_len);
    putc_unlocked(' ', stdout);
    put_name(ev->host, ev->host_len);
    fputs(ev->is_image ? " image " : " delta ", stdout);
    if (ev->content_type[0] != '\0') {
        fputs("type=", stdout);
        put_name(ev->content_type, strlen(ev->content_type));
        putc_unlocked(' ', stdout);
    }
}

/* One line per packet; a message without packets gets one line saying
 * what it is: STALE (publisher gone, or not entitled) or EMPTY. */
static void
print_data(const struct bg_event *ev, enum payload_form form)
{
    if (ev->n_packets == 0) {
        put_data_prefix(ev);
        fputs(ev->user_len == 0 && ev->host_len == 0 && ev->is_image ? "STALE\n"
                                                                     : "EMPTY\n",
            stdout);
        return;
    }
    for (size_t i = 0; i < ev->n_packets; i++) {
        const struct bg_packet *pk = &ev->packets[i];

        put_data_prefix(ev);
        put_ents(pk);
        if (pk->len > 0) {
            putc_unlocked(' ', stdout);
            put_payload(stdout, form, pk->data, pk->len);
        }
        putc_unlocked('\n', stdout);
    }
}

/* "CLIENT-ID USER HOST FEED TOPIC" (NOTIFICATION after add|remove, AUTHREQ). */
static void
print_id_names(const struct bg_event *ev)
{
    fputs(ev->client_id_text, stdout);
    putc_unlocked(' ', stdout);
    put_name(ev->user, ev->user_len);
    putc_unlocked(' ', stdout);
    put_name(ev->host, ev->host_len);
    putc_unlocked(' ', stdout);
    put_name(ev->feed, ev->feed_len);
    putc_unlocked(' ', stdout);
    put_name(ev->topic, ev->topic_len);
    putc_unlocked('\n', stdout);
}

static void
count_event(const struct opts *o)
{
    static uint64_t seen_events; /* for --count */

    if (o->count > 0 && ++seen_events >= o->count)
        cli_finish(EXIT_DONE);
}

/* Print the events of kind until --count of them came. */
static void __attribute__((noreturn))
print_events(struct cli *c, const struct opts *o, enum bg_event_kind kind)
{
    for (;;) {
        const struct bg_event *ev = cli_next(c, -1);

        if (ev->kind != kind)
            continue;
        if (kind == BG_EV_DATA) {
            print_data(ev, o->form);
        } else {
            fputs(ev->is_add ? "add " : "remove ", stdout);
            print_id_names(ev);
        }
        count_event(o);
    }
}

/* Whether topic args[i] came before it (args[0] is the feed). */
static bool
repeated_topic(char **args, int i)
{
    for (int j = 1; j < i; j++)
        if (strcmp(args[j], args[i]) == 0)
            return true;
    return false;
}

/* Subscribe to each topic once: a list built by a script may repeat one,
 * and the daemon refuses a second SUB as already-subscribed. */
void
cli_run_sub(struct cli *c, const struct opts *o, char **args, int nargs)
{
    int r;

    for (int i = 1; i < nargs; i++) {
        if (repeated_topic(args, i))
            continue;
        if ((r = bg_subscribe(c->bg, args[0], strlen(args[0]), args[i], strlen(args[i]))) <
            0)
            cli_bg_fail(c, r);
    }
    print_events(c, o, BG_EV_DATA);
}

void
cli_run_notify(struct cli *c, const struct opts *o, char **args, int nargs)
{
    int r;

    if ((r = bg_notify(c->bg, args[0], strlen(args[0]))) < 0)
        cli_bg_fail(c, r);
    print_events(c, o, BG_EV_NOTIFICATION);
}

/* Answer one request as the options say; false when another authorizer
 * answered it first (the first answer counts, so ours is moot). Any other
 * refusal means our answers cannot be taken (bad entitlements, bus down,
 * request expired): going on would leave every request unanswered. */
static bool
answer_request(struct cli *c, const struct opts *o, const struct bg_event *ev)
{
    int r = bg_authorize(c->bg, ev->client_id, ev->feed, ev->feed_len, ev->topic,
        ev->topic_len, !o->not_required, o->ent_v, o->ent_n);

    if (r == -BG_E_ALREADY_ANSWERED) {
        cli_note("%s", bg_errstr(c->bg));
        return false;
    }
    if (r < 0)
        cli_bg_fail(c, r);
    return true;
}

/* Answer each request and print it; --count counts the answers taken. */
void
cli_run_authorize(struct cli *c, const struct opts *o, char **args, int nargs)
{
    int r;

    if ((r = bg_authorizer(c->bg, args[0], strlen(args[0]))) < 0)
        cli_bg_fail(c, r);
    for (;;) {
        const struct bg_event *ev = cli_next(c, -1);

        if (ev->kind != BG_EV_AUTHREQ)
            continue;
        print_id_names(ev);
        if (answer_request(c, o, ev))
            count_event(o);
    }
}
