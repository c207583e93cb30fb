#include <stdio.h>
#include <busgate.h>

int main(int argc, char **argv)
{
    bg_conn *c = bg_connect(argc > 1 ? argv[1] : NULL);   /* NULL: $BUSGATE_SOCKET or the default */
    struct bg_packet hello = { "hello", 5, NULL, 0 };     /* data, length, no entitlements */
    const struct bg_event *ev;
    int ok = !bg_error_code(c) && !bg_subscribe(c, "prices", 6, "AAPL", 4) &&
             !bg_publish(c, "prices", 6, "AAPL", 4, true, &hello, 1);

    while (ok && (ok = bg_next_event(c, -1, &ev) == 0) && ev->kind != BG_EV_DATA)
        ;   /* BUS and LINK events: the bus link or busgated went down or came back */
    if (ok)
        printf("%s %s: %.*s\n", ev->feed, ev->topic, (int)ev->packets[0].len, (const char *)ev->packets[0].data);
    else
        fprintf(stderr, "busgate: %s\n", bg_errstr(c));
    bg_free(c);
    return !ok;
}
