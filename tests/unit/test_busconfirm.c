/*
 * The login probe (src/busconfirm.c): the requests it sends at each bus
 * protocol (identical at all of them), a topic new per link, and how it
 * classifies what comes back.
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

#include "busconfirm.h"

static const uint8_t CID[GUID_WIRE_LEN] = { 0x33, 0x22, 0x11, 0x00, 0x55, 0x44, 0x77, 0x66,
    0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff };

static void
cfg_init(struct config_bus *c, enum config_confirm method, int protocol)
{
    memset(c, 0, sizeof *c);
    c->confirm = method;
    c->confirm_feed = "__busgate__";
    c->protocol = protocol;
}

static struct wire_str
ws(const char *s)
{
    return (struct wire_str){ s, (uint32_t)strlen(s) };
}

/* The probe's bytes at version, decoded back: notify add, subscribe add. */
static void
t_probe_requests(void **state)
{
    static const int versions[] = { 3, 4, 6 };
    struct evbuffer *first = NULL;

    for (size_t i = 0; i < sizeof versions / sizeof versions[0]; i++) {
        struct config_bus c;
        struct busconfirm p;
        struct evbuffer *out = evbuffer_new();
        struct wire_limits lim;
        struct wire_msg m;
        const char *cause = NULL;
        char topic[sizeof p.topic];

        cfg_init(&c, CONFIG_CONFIRM_PROBE, versions[i]);
        busconfirm_init(&p);
        assert_int_equal(busconfirm_begin(&p, &c, out), 0);
        assert_int_equal(p.state, BUSCONFIRM_WAITING);
        assert_non_null(strchr(p.topic, '/'));
        snprintf(topic, sizeof topic, "%s", p.topic);
        wire_limits_default(&lim);
        wire_msg_init(&m);
        m.version = versions[i];
        if (first == NULL) {
            first = evbuffer_new();
            evbuffer_add_buffer_reference(first, out);
        } else {
            /* byte-identical at every version but for the topic's guid */
            assert_int_equal(evbuffer_get_length(out), evbuffer_get_length(first));
        }
        assert_int_equal(wire_decode(out, &lim, &m, &cause), WIRE_DECODED);
        assert_int_equal(m.type, WIRE_NOTIFICATION_REQUEST);
        assert_true(m.is_add);
        assert_string_equal(m.feed.ptr, "__busgate__");
        assert_int_equal(wire_decode(out, &lim, &m, &cause), WIRE_DECODED);
        assert_int_equal(m.type, WIRE_SUBSCRIPTION_REQUEST);
        assert_true(m.is_add);
        assert_string_equal(m.topic.ptr, topic);
        assert_int_equal(evbuffer_get_length(out), 0);
        /* withdrawn in the opposite order */
        assert_int_equal(busconfirm_withdraw(&p, versions[i], out), 0);
        assert_int_equal(wire_decode(out, &lim, &m, &cause), WIRE_DECODED);
        assert_int_equal(m.type, WIRE_SUBSCRIPTION_REQUEST);
        assert_false(m.is_add);
        assert_int_equal(wire_decode(out, &lim, &m, &cause), WIRE_DECODED);
        assert_int_equal(m.type, WIRE_NOTIFICATION_REQUEST);
        assert_false(m.is_add);
        /* a new link, a new topic */
        assert_int_equal(busconfirm_begin(&p, &c, out), 0);
        assert_string_not_equal(p.topic, topic);
        wire_msg_free(&m);
        busconfirm_free(&p);
        evbuffer_free(out);
    }
    evbuffer_free(first);
}

static void
t_probe_verdicts(void **state)
{
    struct config_bus c;
    struct busconfirm p;
    struct evbuffer *out = evbuffer_new();
    struct wire_msg m;

    cfg_init(&c, CONFIG_CONFIRM_PROBE, 3);
    busconfirm_init(&p);
    assert_int_equal(busconfirm_begin(&p, &c, out), 0);
    evbuffer_drain(out, evbuffer_get_length(out));
    memset(&m, 0, sizeof m);

    /* other feeds, and authorization requests on ours, are the router's */
    m.type = WIRE_FORWARDED_MULTICAST;
    m.feed = ws("PRICES");
    m.topic = ws(p.topic);
    assert_int_equal(busconfirm_check(&p, &m), BUSCONFIRM_NOT_OURS);
    m.type = WIRE_AUTHORIZATION_REQUEST;
    m.feed = ws("__busgate__");
    assert_int_equal(busconfirm_check(&p, &m), BUSCONFIRM_NOT_OURS);

    /* another link's probe, told on registering: consumed */
    m.type = WIRE_FORWARDED_SUBSCRIPTION;
    m.topic = ws("elsewhere/x");
    m.is_add = true;
    assert_int_equal(busconfirm_check(&p, &m), BUSCONFIRM_CONSUMED);
    assert_false(p.have_client_id);

    /* our own subscription: the echo, with our client id */
    m.topic = ws(p.topic);
    memcpy(m.client_id, CID, sizeof CID);
    assert_int_equal(busconfirm_check(&p, &m), BUSCONFIRM_ECHO);
    assert_true(p.have_client_id);
    assert_memory_equal(p.client_id, CID, sizeof CID);
    p.state = BUSCONFIRM_CONFIRMED;
    assert_int_equal(busconfirm_check(&p, &m), BUSCONFIRM_CONSUMED);

    /* a not-entitled answer while waiting: refused */
    p.state = BUSCONFIRM_WAITING;
    m.type = WIRE_FORWARDED_MULTICAST;
    m.is_image = true;
    assert_int_equal(busconfirm_check(&p, &m), BUSCONFIRM_REFUSED);

    /* without the probe nothing is the link's */
    cfg_init(&c, CONFIG_CONFIRM_NONE, 3);
    assert_int_equal(busconfirm_begin(&p, &c, out), 0);
    assert_int_equal(evbuffer_get_length(out), 0);
    assert_int_equal(p.state, BUSCONFIRM_OFF);
    assert_int_equal(busconfirm_check(&p, &m), BUSCONFIRM_NOT_OURS);
    assert_string_equal(busconfirm_state_name(BUSCONFIRM_DENIED), "probe-denied");
    busconfirm_free(&p);
    evbuffer_free(out);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(t_probe_requests),
        cmocka_unit_test(t_probe_verdicts),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
