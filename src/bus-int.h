/*
 * Private to the bus-*.c files (the public face is bus.h): the link's
 * state and what its parts call of each other. The parts: bus.c (state,
 * backoff, configuration, the public API), bus-connect.c (resolve, TCP,
 * TLS), bus-auth.c (the credentials message), bus-link.c (the live link:
 * reading, confirming the login, the heartbeat watchdog), bus-close.c
 * (closing, draining, what a failed link loses).
 */
#ifndef BUSGATE_BUS_INT_H
#define BUSGATE_BUS_INT_H

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <linux/sockios.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <event2/util.h>
#include <openssl/ssl.h>

#include "bus.h"
#include "busconfirm.h"
#include "credentials.h"
#include "log.h"
#include "tls.h"
#include "sockread.h"

/* Identical failures in a row are logged once, then every this many. */
#define BUS_LOG_REPEAT_EVERY 10
/* Bytes moved per read or write callback (libevent's default is 16 KiB):
 * fewer wake-ups per megabyte when the bus streams. */
#define BUS_IO_CHUNK (256 * 1024)
/* Bytes read from a plain bus socket in one loop turn (bus_read): up to
 * BUS_TURN_BYTES; up to BUS_TURN_MAX while what the turn gave the local
 * outputs waiting for its end is under BUS_TURN_SHARE each; and only while
 * one read gives at least BUS_READ_AGAIN. */
#define BUS_TURN_BYTES (1u << 20)
#define BUS_TURN_MAX (4u << 20)
#define BUS_TURN_SHARE (8u << 10)
#define BUS_READ_AGAIN (32u << 10)
/* Most OpenSSL error codes looked at to explain one failure. */
#define BUS_MAX_SSL_ERRORS 8
/* A batch of data sends goes to the output when it reaches this size
 * (or at the end of the loop turn); a larger buffer is not kept. */
#define BUS_BATCH_MAX (64 * 1024)
/* A batch at least this full is handed to the output whole (no copy) and
 * a new one started; a smaller one costs less to copy than a new buffer. */
#define BUS_BATCH_HANDOVER (16 * 1024)

#define HEARTBEAT_FEED "__admin__"
#define HEARTBEAT_TOPIC "heartbeat"

/* A closed link still flushing its last whole messages. */
struct bus_drain {
    struct bus *bus;
    struct bufferevent *bev;
    struct event *timer;
    LIST_ENTRY(bus_drain) entry;
};

/* A pending DNS lookup; outlives the bus if cancelled (evdns calls back later). */
struct bus_resolve {
    struct bus *bus; /* NULL once cancelled */
    struct evdns_getaddrinfo_request *req;
};

struct bus {
    struct event_base *base;
    struct evdns_base *dns;
    bool own_dns;          /* created here because the caller gave none */
    struct config_bus cfg; /* our deep copy */
    SSL_CTX *ssl_ctx;      /* NULL without TLS (or until it can be built) */
    struct bus_callbacks cb;
    void *cb_arg;

    enum bus_state state;
    bool started;
    bool stopping;  /* bus_shutdown called: no more attempts */
    bool attempted; /* an attempt was made before (for stats) */

    /* The current attempt or link. */
    struct bufferevent *bev;
    bool tls_phase; /* bev is the OpenSSL one */
    struct bus_resolve *resolve;
    struct evutil_addrinfo *addrs;     /* resolved addresses */
    struct evutil_addrinfo *next_addr; /* the next one to try */
    char peer[INET6_ADDRSTRLEN + 16];  /* "addr:port" being tried */
    int last_sys_err;
    char auth_desc[192];   /* "basic, user gw": for logs, never a secret */
    uint64_t auth_sent_ms; /* monotonic, when the credentials went out */
    uint64_t up_since_ms;
    uint64_t last_rx_ms;
    bool rx_any;            /* something arrived on this link */
    size_t turn_share;      /* on_batch_end's answer for the last read */
    bool hb_any;            /* a heartbeat arrived on this link */
    bool hb_warned;         /* "traffic but no heartbeat" said for this link */
    const char *hb_state;   /* for STATS: see struct bus_stats */
    bool mismatch_hinted;   /* the protocol mismatch hint is logged once */
    uint64_t msgs_at_login; /* st.msgs_in when this link logged in */
    bool pressure;          /* output passed the high-water mark */

    struct event *retry_timer;         /* DOWN: the next attempt */
    struct event *connect_timer;       /* CONNECTING: bounds the whole attempt */
    struct event *watchdog;            /* UNCONFIRMED/UP: heartbeat timeout */
    struct event *confirm_timer;       /* UNCONFIRMED/UP: the probe's deadline */
    struct busconfirm confirm;         /* how this link's login is confirmed */
    char client_id[GUID_TEXT_LEN + 1]; /* learned from the probe, "" if not */
    bool probe_hinted;     /* the "roles may deny the probe" hint is logged once */
    struct event *done_ev; /* bus_shutdown completion */

    unsigned attempt;      /* failures since the link was last up for long */
    unsigned streak;       /* failed attempts since the link was last up */
    unsigned retries;      /* retries scheduled since the link was last up */
    char fail_reason[256]; /* the last failure, to summarise repeats */
    unsigned fail_repeats;

    void (*shutdown_done)(void *);
    void *shutdown_arg;
    bool shutdown_pending;

    TAILQ_HEAD(out_run_list, out_run) runs; /* the output's recent appends, oldest first */
    size_t runs_len;                        /* bytes they cover */

    /* Data sends of this loop turn (publishes, sends, answers), encoded
     * one after the other and appended to the output once (bus_batch_flush):
     * one evbuffer callback per batch, not per message. They count as
     * queued, and as data lost if the link fails. */
    uint8_t *batch;
    size_t batch_len, batch_cap;
    struct event *batch_ev; /* flushes the batch at the end of the turn */
    /* The output's length when the batch began, at most: until the batch
     * is flushed the output only shrinks (appends go through bus_output,
     * which flushes the batch first; the link's own writes at login come
     * before any batch), so batch_out + batch_len bounds what is queued
     * and a data send measures the output only when that bound passes
     * the high-water mark. */
    size_t batch_out;

    struct wire_msg msg; /* reused for every decoded message */
    struct bus_stats st;
    LIST_HEAD(, bus_drain) drains;
};

/* A stretch of consecutive appends to the link's output of one kind. */
struct out_run {
    TAILQ_ENTRY(out_run) entry;
    size_t len;
    bool data; /* publishes, sends, answers: lost if the link fails */
};

/* Attempts are logged at info until a failure repeats, then at debug. */
#define bus_log_attempt(bus, ...)                                                          \
    log_msg(bus_quiet(bus) ? LOG_DEBUG : LOG_INFO, NULL, __VA_ARGS__)

/* bus.c */
bool bus_quiet(const struct bus *bus);
uint64_t bus_now_ms(void);
void bus_timer_arm(struct event *ev, uint64_t ms);
double bus_random_unit(void);
const char *bus_target(const struct bus *bus);
void bus_fmt_duration(uint32_t ms, char *buf, size_t len);
bool bus_wire_str_is(const struct wire_str *s, const char *lit);
uint32_t bus_backoff_cap(uint32_t *min_ms, uint32_t max_ms, unsigned attempt);
void bus_set_state(struct bus *bus, enum bus_state state, const char *reason);
void bus_log_down(struct bus *bus, const char *reason);
size_t bus_queued(const struct bus *bus);
void bus_batch_flush(struct bus *bus);
void bus_batch_discard(struct bus *bus);
struct evbuffer *bus_output(struct bus *bus);

/* bus-close.c */
void bus_free_addrs(struct bus *bus);
void bus_drain_free(struct bus_drain *d);
void bus_close_link(struct bus *bus, bool drain, uint32_t drain_ms);
void bus_out_runs_note(struct bus *bus, size_t len, bool data);
void bus_release_pressure(struct bus *bus);
void bus_link_failed(struct bus *bus, const char *reason, bool auth_failure);

/* bus-auth.c */
int bus_send_auth(struct bus *bus, char *err, size_t errlen);

/* bus-link.c */
void bus_confirm_timeout(evutil_socket_t fd, short what, void *arg);
bool bus_describe_error(struct bus *bus, struct bufferevent *bev, short events, char *buf,
    size_t len);
void bus_watchdog(evutil_socket_t fd, short what, void *arg);
void bus_link_established(struct bus *bus);

/* bus-connect.c */
void bus_connect_timeout(evutil_socket_t fd, short what, void *arg);
void bus_connect_begin(struct bus *bus);

#endif /* BUSGATE_BUS_INT_H */
