/*
 * The values of settings as people write them: sizes (4KiB, 16MiB),
 * durations (500ms, 10s, 5m), octal modes and booleans, parsed strictly and
 * written back the same way for --check-config.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/un.h>

#include "config-int.h"

void
config_fmt_size(uint64_t v, char *buf, size_t n)
{
    if (v == 0)
        snprintf(buf, n, "0");
    else if (v % GIB == 0)
        snprintf(buf, n, "%lluGiB", (unsigned long long)(v / GIB));
    else if (v % MIB == 0)
        snprintf(buf, n, "%lluMiB", (unsigned long long)(v / MIB));
    else if (v % KIB == 0)
        snprintf(buf, n, "%lluKiB", (unsigned long long)(v / KIB));
    else
        snprintf(buf, n, "%lluB", (unsigned long long)v);
}

void
config_fmt_ms(uint64_t v, char *buf, size_t n)
{
    if (v == 0)
        snprintf(buf, n, "0");
    else if (v % 3600000 == 0)
        snprintf(buf, n, "%lluh", (unsigned long long)(v / 3600000));
    else if (v % 60000 == 0)
        snprintf(buf, n, "%llum", (unsigned long long)(v / 60000));
    else if (v % 1000 == 0)
        snprintf(buf, n, "%llus", (unsigned long long)(v / 1000));
    else
        snprintf(buf, n, "%llums", (unsigned long long)v);
}

/* Leading decimal digits into *out; *end after them. -1 if none or overflow. */
int
config_parse_digits(const char *s, uint64_t *out, const char **end)
{
    uint64_t v = 0;

    if (*s < '0' || *s > '9')
        return -1;
    for (; *s >= '0' && *s <= '9'; s++) {
        if (v > (UINT64_MAX - (uint64_t)(*s - '0')) / 10)
            return -1;
        v = v * 10 + (uint64_t)(*s - '0');
    }
    *out = v;
    *end = s;
    return 0;
}

static int
scale(uint64_t n, uint64_t mult, uint64_t *out)
{
    if (mult != 0 && n > UINT64_MAX / mult)
        return -1;
    *out = n * mult;
    return 0;
}

int
config_parse_size(const char *s, uint64_t *out)
{
    /* KiB, MiB, GiB in any case (unambiguous); B, kB, MB, GB only as
     * written: "KB", "kb" or "mb" are as often meant as 1024s, and a size
     * must not be a guess. */
    static const struct {
        const char *unit;
        uint64_t mult;
        bool any_case;
    } units[] = {
        { "", 1, false },
        { "B", 1, false },
        { "KiB", KIB, true },
        { "MiB", MIB, true },
        { "GiB", GIB, true },
        { "kB", 1000, false },
        { "MB", 1000000, false },
        { "GB", 1000000000, false },
    };
    uint64_t n;
    const char *p;

    if (s == NULL || config_parse_digits(s, &n, &p) != 0)
        return -1;
    /* One space may separate the number from its unit: "4 MiB". */
    if (*p == ' ' && *++p == '\0')
        return -1;
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++)
        if ((units[i].any_case ? strcasecmp(p, units[i].unit) : strcmp(p, units[i].unit)) ==
            0)
            return scale(n, units[i].mult, out);
    return -1;
}

int
config_parse_duration_ms(const char *s, uint64_t *out)
{
    static const struct {
        const char *unit;
        uint64_t mult;
    } units[] = {
        { "ms", 1 },
        { "s", 1000 },
        { "m", 60000 },
        { "h", 3600000 },
    };
    uint64_t n;
    const char *p;

    if (s == NULL || config_parse_digits(s, &n, &p) != 0)
        return -1;
    if (*p == '\0') {
        /* A bare number is ambiguous, except 0. */
        if (n != 0)
            return -1;
        *out = 0;
        return 0;
    }
    if (*p == ' ')
        p++;
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++)
        if (strcmp(p, units[i].unit) == 0)
            return scale(n, units[i].mult, out);
    return -1;
}

int
config_parse_bool(const char *s, bool *out)
{
    static const char *const yes[] = { "true", "yes", "on" };
    static const char *const no[] = { "false", "no", "off" };

    for (size_t i = 0; i < 3; i++) {
        if (strcasecmp(s, yes[i]) == 0) {
            *out = true;
            return 0;
        }
        if (strcasecmp(s, no[i]) == 0) {
            *out = false;
            return 0;
        }
    }
    return -1;
}

/* Octal, with or without a leading 0 or 0o: a mode is always octal. */
int
config_parse_mode(const char *s, uint64_t *out)
{
    uint64_t v = 0;

    if (s[0] == '0' && (s[1] == 'o' || s[1] == 'O'))
        s += 2;
    if (*s == '\0')
        return -1;
    for (; *s != '\0'; s++) {
        if (*s < '0' || *s > '7' || v > 0xffffff)
            return -1;
        v = v * 8 + (uint64_t)(*s - '0');
    }
    *out = v;
    return 0;
}

/* The port after an address: 1 to 65535. */
static int
parse_port(const char *s, uint16_t *port)
{
    uint64_t v;
    const char *end;

    if (config_parse_digits(s, &v, &end) != 0 || *end != '\0' || v == 0 || v > 65535)
        return -1;
    *port = (uint16_t)v;
    return 0;
}

static int
metrics_inet(const char *s, struct sockaddr_storage *ss, socklen_t *len, bool *loopback,
    const char **why)
{
    char host[INET6_ADDRSTRLEN + 1];
    const char *colon;
    uint16_t port;
    size_t n;
    bool v6 = s[0] == '[';

    colon = v6 ? strstr(s, "]:") : strrchr(s, ':');
    if (colon == NULL || (n = (size_t)(colon - s) - v6) == 0 || n >= sizeof host) {
        *why = "expected a Unix socket path (absolute), 127.0.0.1:PORT or [::1]:PORT";
        return -1;
    }
    memcpy(host, s + v6, n);
    host[n] = '\0';
    if (parse_port(colon + 1 + v6, &port) != 0) {
        *why = "the port must be a number from 1 to 65535";
        return -1;
    }
    memset(ss, 0, sizeof *ss);
    if (v6) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;

        a->sin6_family = AF_INET6;
        a->sin6_port = htons(port);
        if (inet_pton(AF_INET6, host, &a->sin6_addr) != 1)
            return *why = "not an IPv6 address literal", -1;
        *loopback = IN6_IS_ADDR_LOOPBACK(&a->sin6_addr);
        *len = sizeof *a;
    } else {
        struct sockaddr_in *a = (struct sockaddr_in *)ss;

        a->sin_family = AF_INET;
        a->sin_port = htons(port);
        if (inet_pton(AF_INET, host, &a->sin_addr) != 1)
            return *why = "not an IPv4 address literal (names are not resolved)", -1;
        *loopback = (ntohl(a->sin_addr.s_addr) >> 24) == 127;
        *len = sizeof *a;
    }
    return 0;
}

int
config_metrics_address(const char *s, struct sockaddr_storage *ss, socklen_t *len,
    bool *loopback, const char **why)
{
    struct sockaddr_un *un = (struct sockaddr_un *)ss;

    if (s[0] != '/')
        return metrics_inet(s, ss, len, loopback, why);
    if (strlen(s) > sizeof un->sun_path - 1) {
        *why = "the socket path is too long";
        return -1;
    }
    memset(ss, 0, sizeof *ss);
    un->sun_family = AF_UNIX;
    memcpy(un->sun_path, s, strlen(s));
    *len = sizeof *un;
    *loopback = true;
    return 0;
}
