#include <sys/types.h>
#include <sys/uio.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>

#include "sockread.h"

#define SOCKREAD_CHUNK (256u << 10)

size_t
sockread_more(struct bufferevent *bev, size_t max)
{
    struct evbuffer *in = bufferevent_get_input(bev);
    evutil_socket_t fd = bufferevent_getfd(bev);
    size_t total = 0;

    /* A socket bufferevent keeps its input's end frozen except while it
     * reads itself. */
    evbuffer_unfreeze(in, 0);
    while (fd >= 0 && total < max) {
        struct evbuffer_iovec v[2];
        int n = evbuffer_reserve_space(in, SOCKREAD_CHUNK, v, 2);
        size_t left;
        ssize_t r;

        if (n <= 0)
            break;
        r = readv(fd, (struct iovec *)v, n);
        if (r <= 0) {
            v[0].iov_len = 0;
            evbuffer_commit_space(in, v, 1);
            break;
        }
        left = (size_t)r;
        for (int i = 0; i < n; i++) {
            if (v[i].iov_len > left)
                v[i].iov_len = left;
            left -= v[i].iov_len;
        }
        evbuffer_commit_space(in, v, n);
        total += (size_t)r;
        if ((size_t)r < SOCKREAD_CHUNK)
            break; /* the socket is drained */
    }
    evbuffer_freeze(in, 0);
    return total;
}
