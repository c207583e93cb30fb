/*
 * Reading a plain socket bufferevent in big gulps. libevent 2.1's
 * evbuffer_read() reads at most 4096 bytes per call (EVBUFFER_MAX_READ), so
 * a bufferevent hands its read callback 4 KiB per loop iteration whatever
 * bufferevent_set_max_single_read says; at high rates that costs a loop
 * iteration, a callback and several syscalls per 4 KiB.
 */
#ifndef BUSGATE_SOCKREAD_H
#define BUSGATE_SOCKREAD_H

#include <stddef.h>

struct bufferevent;

/* From a read callback: pull up to max more bytes straight from the
 * socket into the bufferevent's input; returns how many. Plain sockets
 * only (never a TLS bufferevent). Errors and EOF are left for the
 * bufferevent to see on its next read. */
size_t sockread_more(struct bufferevent *bev, size_t max);

#endif /* BUSGATE_SOCKREAD_H */
