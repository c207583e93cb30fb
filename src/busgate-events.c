/*
 * busgate sub, notify and authorize: what arrives, printed (payloads as
 * text, hex or base64), and the answers of an authorizer.
 */
#include "busgate-int.h"

static uint64_t seen_events; /* for --count */

/* A payload as one line of text: UTF-8 as is; backslash, control bytes
 * and invalid UTF-8 as C escapes, so every packet stays on its line. */
static void
put_text(FILE *f, const uint8_t *p, size_t n)
{
    size_t i = 0, k;

    while (i < n) {
        uint8_t ch = p[i];

        if (ch >= 0x20 && ch < 0x7f && ch != '\\') {
            putc_unlocked(ch, f);
            i++;
        } else if (ch >= 0x80 && (k = utf8_seq_len(p + i, n - i)) > 0) {
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

static void
put_name(struct cli *c, const struct lp_name *name)
{
    evbuffer_drain(c->scratch, evbuffer_get_length(c->scratch));
    lp_put_name(c->scratch, name->ptr, name->len);
    fwrite(evbuffer_pullup(c->scratch, -1), 1, evbuffer_get_length(c->scratch), stdout);
}

static void
put_ents(const struct wire_ints *e)
{
    if (e->n == 0) {
        putc_unlocked('-', stdout);
        return;
    }
    printf("%" PRId32, e->v[0]);
    for (uint32_t i = 1; i < e->n; i++)
        printf(",%" PRId32, e->v[i]);
}

/* "FEED TOPIC USER HOST image|delta" */
static void
put_data_prefix(struct cli *c)
{
    put_name(c, &c->ev.feed);
    putc_unlocked(' ', stdout);
    put_name(c, &c->ev.topic);
    putc_unlocked(' ', stdout);
    put_name(c, &c->ev.user);
    putc_unlocked(' ', stdout);
    put_name(c, &c->ev.host);
    fputs(c->ev.is_image ? " image " : " delta ", stdout);
}

/* One line per packet; a message without packets gets one line saying
 * what it is: STALE (publisher gone, or not entitled) or EMPTY. */
static void
print_data(struct cli *c, enum payload_form form)
{
    const uint8_t *p = c->payload;

    if (c->ev.n_packets == 0) {
        put_data_prefix(c);
        fputs(c->ev.user.len == 0 && c->ev.host.len == 0 && c->ev.is_image ? "STALE\n"
                                                                           : "EMPTY\n",
            stdout);
        return;
    }
    for (uint32_t i = 0; i < c->ev.n_packets; i++) {
        const struct wire_packet *pk = &c->ev.packets[i];

        put_data_prefix(c);
        put_ents(&pk->entitlements);
        if (pk->len > 0) {
            putc_unlocked(' ', stdout);
            put_payload(stdout, form, p, pk->len);
        }
        putc_unlocked('\n', stdout);
        p += pk->len;
    }
}

/* "CLIENT-ID USER HOST FEED TOPIC" (NOTIFICATION after add|remove, AUTHREQ). */
static void
print_id_names(struct cli *c)
{
    char id[GUID_TEXT_LEN + 1];

    guid_to_text(c->ev.client_id, id);
    fputs(id, stdout);
    putc_unlocked(' ', stdout);
    put_name(c, &c->ev.user);
    putc_unlocked(' ', stdout);
    put_name(c, &c->ev.host);
    putc_unlocked(' ', stdout);
    put_name(c, &c->ev.feed);
    putc_unlocked(' ', stdout);
    put_name(c, &c->ev.topic);
    putc_unlocked('\n', stdout);
}

static void
count_event(struct cli *c, const struct opts *o)
{
    if (o->count > 0 && ++seen_events >= o->count) {
        cli_settle(c);
        cli_finish(EXIT_DONE);
    }
}

static void
sub_event(struct cli *c, const struct opts *o)
{
    if (c->ev.kind == LP_EV_DATA) {
        print_data(c, o->form);
        count_event(c, o);
    }
}

void
cli_run_sub(struct cli *c, const struct opts *o, char **args, int nargs)
{
    for (int i = 1; i < nargs; i++)
        cli_send_names(c, LP_SUB, args[0], args[i]);
    cli_confirm(c, sub_event, o);
    for (;;) {
        cli_next(c, -1, 0);
        if (cli_common(c, true) == 0)
            sub_event(c, o);
    }
}

static void
notify_event(struct cli *c, const struct opts *o)
{
    if (c->ev.kind == LP_EV_NOTIFICATION) {
        fputs(c->ev.is_add ? "add " : "remove ", stdout);
        print_id_names(c);
        count_event(c, o);
    }
}

void
cli_run_notify(struct cli *c, const struct opts *o, char **args, int nargs)
{
    cli_send_names(c, LP_NOTIFY, args[0], NULL);
    cli_confirm(c, notify_event, o);
    for (;;) {
        cli_next(c, -1, 0);
        if (cli_common(c, true) == 0)
            notify_event(c, o);
    }
}

/* Answer each request as the options say; print it. Replies to the
 * answers are not fatal: another authorizer may have answered first. */
static void
authorize_event(struct cli *c, const struct opts *o)
{
    if (c->ev.kind != LP_EV_AUTHREQ)
        return;
    print_id_names(c);
    if (lp_format_cmd_authorize(c->out, c->ev.client_id, c->ev.feed.ptr, c->ev.feed.len,
            c->ev.topic.ptr, c->ev.topic.len, !o->not_required, o->ents) < 0)
        cli_fail(EXIT_NODAEMON, "out of memory");
    c->awaiting++;
    count_event(c, o);
}

void
cli_run_authorize(struct cli *c, const struct opts *o, char **args, int nargs)
{
    cli_send_names(c, LP_AUTHORIZER, args[0], NULL);
    cli_confirm(c, authorize_event, o);
    for (;;) {
        cli_next(c, -1, 0);
        if (cli_common(c, true) == 0)
            authorize_event(c, o);
    }
}
