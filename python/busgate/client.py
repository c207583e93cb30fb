"""An asyncio client of busgated whose surface mirrors the upstream
jetblack-messagebus python client 3.0.1 (CallbackClient), so an app moves
onto the gateway by changing its import and its create(...) line.

Beyond upstream: bus state events (bus_state_handlers), the session's own
state (link_handlers), closing errors such as slow-consumer
(error_handlers), registrations the daemon's access rules ended
(revoked_handlers), and automatic reconnect with bounded backoff after
which subscriptions, notifications and authorizer registrations are
restored.

Authorization requests: as upstream, an app appends a handler to
authorization_handlers (or _authorization_handlers) and gets every request.
While that list is non-empty the client holds busgated's all-feeds
registration (AUTHORIZER with no feed): taken when the first handler is
appended, given back when the last is removed, restored on reconnect.
add_authorizer(feed) still registers one feed (busgate's own)."""

import asyncio
import collections
import errno
import logging
import uuid
from typing import Awaitable, Callable, Dict, List, Optional, Set

from . import protocol as p
from .protocol import BusgateError, DataPacket  # noqa: F401  (part of the API)

log = logging.getLogger("busgate")

# Upstream's handler types, for apps that annotate with them.
DataHandler = Callable[[str, str, str, str, Optional[List[DataPacket]], bool],
                       Awaitable[None]]
NotificationHandler = Callable[[uuid.UUID, str, str, str, str, bool], Awaitable[None]]
AuthorizationHandler = Callable[[uuid.UUID, str, str, str, str], Awaitable[None]]

# NAME's limit (busgated's LP_MAX_APP_NAME).
MAX_APP_NAME = 64

# busgated's default listen.max_line, for a greeting that does not say.
DEFAULT_MAX_LINE = 65536

# Lines from the daemon are at most a few packet specs longer than
# max_line; a generous bound keeps a broken peer from eating memory. (The
# stream also buffers up to twice this much unread before it stops
# reading the socket.)
READ_LIMIT = 1 << 24

# Events read but not yet handled, by default: past this many, or these
# bytes of them, the client stops reading busgated; unless a reply is
# awaited: then past the bytes it ends the session, as libbusgate's
# bg_set_max_queued does (see _wait_for_room).
MAX_QUEUED = 10000
MAX_QUEUED_BYTES = 64 << 20

# How long a request waits for busgated's reply by default, in seconds (as
# libbusgate's bg_set_timeout).
REQUEST_TIMEOUT = 10.0


class _WatchedList(list):
    """A list that calls on_change(non_empty) when it gains its first item
    or loses its last (authorization_handlers: upstream apps just append)."""

    def __init__(self, on_change: Callable[[bool], None]) -> None:
        super().__init__()
        self._on_change = on_change


def _watched(name: str):
    plain = getattr(list, name)

    def method(self, *args):
        had = bool(self)
        result = plain(self, *args)
        if had != bool(self):
            self._on_change(bool(self))
        return result
    method.__name__ = name
    return method


for _name in ("append", "extend", "insert", "remove", "pop", "clear", "__setitem__",
              "__delitem__", "__iadd__", "__imul__"):
    setattr(_WatchedList, _name, _watched(_name))


# Queued after the last event of a session that ends without reconnect.
_ENDED = None


class _Dispatcher(asyncio.Task):
    """The dispatch task, counting the cancels asked of it: a
    CancelledError out of a handler is then the task's own cancel only if
    one was asked (Task.cancelling() would say so, but only from 3.11)."""
    cancels = 0

    def cancel(self, *args, **kwargs):
        self.cancels += 1
        return super().cancel(*args, **kwargs)


class CallbackClient:
    """A session with busgated whose events go to lists of async handlers."""

    def __init__(self, path: Optional[str] = None, *, reconnect: bool = True,
                 backoff_min: float = 0.05, backoff_max: float = 5.0,
                 app_name: Optional[str] = None,
                 connect_timeout: Optional[float] = 10.0,
                 request_timeout: Optional[float] = REQUEST_TIMEOUT,
                 max_queued: int = MAX_QUEUED,
                 max_queued_bytes: int = MAX_QUEUED_BYTES) -> None:
        self.path = path or p.default_socket()
        # How long a connection may take to be greeted (None: no bound).
        # A daemon that is stuck, or a socket nobody accepts on, would
        # otherwise hold create() or a reconnect for ever.
        self.connect_timeout = connect_timeout
        # How long a request may wait for its reply (None: no bound); a
        # daemon that is stuck would otherwise hold the app's await for ever.
        self.request_timeout = request_timeout
        self.max_queued = max_queued
        self.max_queued_bytes = max_queued_bytes
        # NAME: how busgated labels the session in STATS and its log.
        self.app_name = _checked_name(app_name) if app_name is not None else None
        self.reconnect = reconnect
        self.backoff = (backoff_min, backoff_max)
        self._delay = backoff_min    # before the next reconnect attempt
        # The upstream handler lists (same arguments as upstream).
        self.data_handlers: List[Callable[..., Awaitable[None]]] = []
        self.notification_handlers: List[Callable[..., Awaitable[None]]] = []
        self._authorization_handlers: List[Callable[..., Awaitable[None]]] = \
            _WatchedList(self._all_feeds_changed)
        # busgate's own: (state, reason), (code, message) and
        # (verb, feed, topic, reason).
        self.bus_state_handlers: List[Callable[..., Awaitable[None]]] = []
        self.link_handlers: List[Callable[..., Awaitable[None]]] = []
        self.error_handlers: List[Callable[..., Awaitable[None]]] = []
        self.revoked_handlers: List[Callable[..., Awaitable[None]]] = []
        # Every event as one object (protocol.Data, Notification, ...).
        self.event_handlers: List[Callable[..., Awaitable[None]]] = []
        self.hello: Optional[p.Hello] = None
        self._max_line = DEFAULT_MAX_LINE
        # The bus link's state: busgated's last word, "down" while
        # busgated is unreachable; _heard_bus: the last the app was told
        # (the first greeting, or a BusState event).
        self.bus_state = "down"
        self._heard_bus: Optional[str] = None
        # What a new session must be told again after a reconnect; the
        # subscriptions and notifications with the app's count of each.
        self._subscriptions: Dict[tuple, int] = {}
        self._notifications: Dict[str, int] = {}
        self._authorizers: Set[str] = set()
        self._writer: Optional[asyncio.StreamWriter] = None
        self._sessions = 0      # sessions opened: which one a restore is for
        self._pending: collections.deque = collections.deque()   # [future, STAT list]
        self._events: asyncio.Queue = asyncio.Queue()   # (event, bytes read for it)
        self._queued_bytes = 0
        self._room = asyncio.Event()    # an event was taken, or a reply is awaited
        self._started = asyncio.Event()
        self._done = asyncio.Event()
        self._stopping = False
        self._ended = False     # _ENDED was taken from the queue
        self._stopped: Optional[asyncio.Future] = None     # stop()'s awaitable
        self._tasks: List[asyncio.Task] = []

    @property
    def authorization_handlers(self) -> list:
        return self._authorization_handlers

    @classmethod
    async def create(cls, path: Optional[str] = None, *, authenticator=None, ssl=None,
                     monitor_heartbeat: bool = False, **kwargs) -> "CallbackClient":
        """Connect to busgated's socket (default $BUSGATE_SOCKET or the daemon's
        compiled-in path). authenticator, ssl and monitor_heartbeat are
        accepted for upstream compatibility and ignored: the gateway holds
        the bus credentials and watches the bus heartbeat itself (its
        bus.heartbeat settings; the app hears the outcome through
        bus_state_handlers)."""
        client = cls(path, **kwargs)
        reader = await client._connect()
        if client._authorization_handlers:   # a subclass may have some already
            client._all_feeds_changed(True)
        client._tasks = [asyncio.ensure_future(client._run(reader)),
                         _Dispatcher(client._dispatch_loop(),
                                     loop=asyncio.get_event_loop())]
        # One round trip before the client is handed out: busgated at its
        # listen.max_sessions greets, then refuses the session (-ERR
        # too-many-sessions) and closes; create() raises that, as for a
        # refused connect, instead of returning a client that reconnects
        # (and is refused) for ever. With an app name, NAME is the trip.
        first = (p.command("NAME", client.app_name) if client.app_name is not None
                 else p.word_command("PING", "", "a ping token"))
        try:
            await client._request(first)
        except BaseException:
            await client.stop()     # else its tasks reconnect for nobody
            raise
        return client

    # -------------------------------------------------------- the session

    async def _connect(self) -> asyncio.StreamReader:
        try:
            reader, writer, self.hello = await asyncio.wait_for(self._greeted(),
                                                                self.connect_timeout)
        except asyncio.TimeoutError:
            raise BusgateError("timeout", "no greeting from busgated in %g s"
                               % self.connect_timeout) from None
        self.bus_state = self.hello.fields.get("bus", "down")
        if self._heard_bus is None:
            self._heard_bus = self.bus_state    # create(): the app reads it
        elif self.bus_state != self._heard_bus:
            # Changed while busgated was away (restarting): no BUS line
            # told it; the handlers hear it as from one.
            self._queue(p.BusState(self.bus_state, "at the reconnect"))
            self._heard_bus = self.bus_state
        max_line = self.hello.fields.get("max_line", "")
        self._max_line = int(max_line) if max_line.isdigit() else DEFAULT_MAX_LINE
        self._writer = writer
        self._sessions += 1
        return reader

    async def _greeted(self):
        try:
            reader, writer = await asyncio.open_unix_connection(self.path, limit=READ_LIMIT)
        except FileNotFoundError as e:
            # busgated not running (its socket removed at exit): refused,
            # as upstream's TCP connect to a distributor that is down is,
            # so that an app's retry on ConnectionRefusedError still works.
            raise ConnectionRefusedError(
                errno.ECONNREFUSED, "busgated is not running: no socket at %s" % self.path
            ) from e
        try:
            return reader, writer, p.parse_hello(await reader.readline())
        except BaseException:   # a bad greeting, or the deadline's cancel
            writer.close()
            raise

    async def _run(self, reader: asyncio.StreamReader) -> None:
        """Read the session; when it is lost, reconnect and restore it."""
        loop = asyncio.get_event_loop()
        while True:
            began = loop.time()
            reason = await self._read_until_lost(reader)
            if loop.time() - began >= self.backoff[1]:
                self._delay = self.backoff[0]   # it lasted: reconnect at once
            self._lost(reason)
            if self._stopping:
                break
            if not self.reconnect:
                # After what was received: the handlers (or next_event)
                # get all of it, the end's Error and Link events included,
                # before start() returns (_dispatch_loop sets _done).
                self._queue(_ENDED)
                return
            reader = await self._reconnect()
            if reader is None:
                break
        self._done.set()

    async def _read_until_lost(self, reader: asyncio.StreamReader) -> str:
        try:
            while True:
                await self._wait_for_room()
                line = await reader.readline()
                if not line:
                    return "busgated closed the session"
                line = line.rstrip(b"\r\n")
                n = p.payload_length(line)
                payloads: list = []
                if n >= 0:
                    block = await reader.readexactly(n + 1)
                    if not block.endswith(b"\n"):
                        raise BusgateError("protocol", "bad payload terminator")
                    payloads = p.split_payload(line, block[:n])
                msg = p.parse_line(line, payloads)
                self._on_message(msg, len(line) + n + 2)
                if self._pending and not isinstance(msg, p.Reply) and \
                        self._queued_bytes > self.max_queued_bytes:
                    # Reading on for a reply has queued too much: cut, as
                    # libbusgate does, at an event (not at once: what an
                    # earlier session left may still be over the bound).
                    why = ("over %d bytes of events queued unread while a reply was"
                           " awaited (max_queued_bytes)" % self.max_queued_bytes)
                    log.warning("busgate: ending the session: slow-consumer %s", why)
                    self._queue(p.Error("slow-consumer", why))
                    return "slow-consumer: " + why
        except (OSError, asyncio.IncompleteReadError, ValueError, BusgateError) as e:
            return "session lost: %s" % (e or type(e).__name__)

    async def _wait_for_room(self) -> None:
        """Handlers that fall behind hold the reader, so that busgated's
        output bound (max_output: -ERR slow-consumer) limits a slow app, as
        for a native client, not this process's memory. A reply that is
        awaited is read on regardless (a handler may be waiting for it),
        up to max_queued_bytes (_read_until_lost)."""
        while not self._pending and (self._events.qsize() >= self.max_queued or
                                     self._queued_bytes > self.max_queued_bytes):
            self._room.clear()
            await self._room.wait()

    def _queue(self, ev, size: int = 0) -> None:
        self._queued_bytes += size
        self._events.put_nowait((ev, size))

    async def _next_event(self):
        """The next event; _ENDED (None) once the session has ended and
        will not be reconnected, and for ever after."""
        if self._ended:
            return _ENDED
        return self._took(await self._events.get())

    def _next_event_nowait(self):
        """As _next_event, but raises asyncio.QueueEmpty at once."""
        if self._ended:
            return _ENDED
        return self._took(self._events.get_nowait())

    def _took(self, item):
        ev, size = item
        self._queued_bytes -= size
        self._room.set()
        if ev is _ENDED:
            self._ended = True
        return ev

    def _on_message(self, msg, size: int = 0) -> None:
        if isinstance(msg, p.Reply):
            self._on_reply(msg)
            return
        if isinstance(msg, p.Error):
            # Logged as well: an upstream-style app has no error_handlers,
            # and a slow-consumer cut loses data.
            log.warning("busgate: busgated ends the session: %s %s", msg.code, msg.message)
            self._fail_pending(BusgateError(msg.code, msg.message))
        elif isinstance(msg, p.Revoked):
            self._forget(msg)
        elif isinstance(msg, p.BusState):
            self.bus_state = self._heard_bus = msg.state
        self._queue(msg, size)

    def _on_reply(self, reply: p.Reply) -> None:
        if not self._pending:
            log.warning("busgate: a reply nobody waits for: %r", reply)
            return
        fut, stats = self._pending[0]
        if reply.kind == "STAT" and stats is not None:
            stats.append(reply)
            return
        self._pending.popleft()
        if not fut.done():
            fut.set_result(stats if reply.kind == "END" else reply)

    def _fail_pending(self, exc: Exception) -> None:
        while self._pending:
            fut, _ = self._pending.popleft()
            if not fut.done():
                fut.set_exception(exc)

    def _lost(self, reason: str) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._fail_pending(BusgateError("disconnected", reason))
        self.bus_state = "down"     # the app cannot reach the bus now
        if not self._stopping:
            log.warning("busgate: session with %s lost (%s)%s", self.path, reason,
                        "; reconnecting" if self.reconnect else "")
            self._queue(p.Link("down", reason))

    async def _reconnect(self) -> Optional[asyncio.StreamReader]:
        """Connect again with bounded exponential backoff, then restore.
        The delay keeps growing over sessions that are greeted but do not
        last (busgated refusing them: too-many-sessions), else they would
        be retried every backoff_min; a session that lasted backoff_max
        (_run) or was restored (_restore) starts it again from
        backoff_min."""
        while not self._stopping:
            await asyncio.sleep(self._delay)
            self._delay = min(self._delay * 2, self.backoff[1])
            try:
                reader = await self._connect()
            except (OSError, BusgateError) as e:
                log.debug("busgate: reconnect to %s: %s", self.path, e)
                continue
            restore = asyncio.ensure_future(self._restore())
            self._tasks.append(restore)
            # Dropped once done: one kept per reconnect would add up.
            restore.add_done_callback(self._drop_task)
            return reader
        return None

    def _drop_task(self, task: asyncio.Task) -> None:
        if task in self._tasks:
            self._tasks.remove(task)

    async def _restore(self) -> None:
        """Tell the new session what the old one had, then say so. A
        session lost meanwhile says nothing: the app was told "down", and
        the next session's restore says "up"."""
        session = self._sessions
        # The name first; it is no registration (checked when set: its
        # reply is not looked at).
        name = [p.command("NAME", self.app_name)] if self.app_name is not None else []
        regs = ([(p.command("SUB", f, t), ("subscribe", f, t))
                 for f, t in sorted(self._subscriptions)]
                + [(p.command("NOTIFY", f), ("notify", f, None))
                   for f in sorted(self._notifications)]
                + [(p.command("AUTHORIZER", f), ("authorize", f, None))
                   for f in sorted(self._authorizers)]
                + ([(p.command("AUTHORIZER"), None)] if self._authorization_handlers else []))
        # Not bounded by request_timeout: an answer late is no refusal (no
        # Revoked for it); a daemon that never answers gets no "up" said.
        results = await asyncio.gather(*(self._request(line, bounded=False)
                                         for line in name),
                                       *(self._request(line, bounded=False)
                                         for line, _ in regs),
                                       return_exceptions=True)
        results = results[len(name):]
        if session != self._sessions or self._writer is None:
            return
        if any(isinstance(r, BusgateError) and _session_ended(r) for r in results):
            # A closing error (or the loss) came before the reader saw the
            # end: the session is going, not refusing; all is kept for the
            # next one, and no "up" is said for this one.
            return
        for (_, what), r in zip(regs, results):
            # already-*: the app made it again itself while we restored.
            if not isinstance(r, BusgateError) or r.code.startswith("already"):
                continue
            if what is None:    # the handlers' registration: their list decides
                self._queue(p.Error(r.code, "restoring: " + r.message))
                continue
            # Refused now (access rules, limits): ended, as by a reload.
            ev = p.Revoked(*what, r.message)
            self._forget(ev)
            self._queue(ev)
        if name or regs:    # answered on this session: it is accepted
            self._delay = self.backoff[0]
        self._queue(p.Link("up", "restored %d requests" % len(regs)))

    def _forget(self, ev: p.Revoked) -> None:
        """The daemon ended a registration: a reconnect must not restore it."""
        if ev.verb == "subscribe":
            self._subscriptions.pop((ev.feed, ev.topic), None)
        elif ev.verb == "notify":
            self._notifications.pop(ev.feed, None)
        elif ev.verb == "authorize":
            self._authorizers.discard(ev.feed)

    def _send(self, line: bytes, stats: bool = False) -> asyncio.Future:
        """Write a request now; the future gets its reply. A line past the
        greeting's max_line is not written: busgated would discard it up to
        its newline and read a message's payload as commands."""
        if self._writer is None:
            raise BusgateError("disconnected", "not connected to busgated")
        if line.find(b"\n") > self._max_line:
            raise BusgateError("line-too-long", "the command line would be longer than "
                               "busgated's max_line, %d bytes; nothing was sent"
                               % self._max_line)
        fut = asyncio.get_event_loop().create_future()
        self._pending.append([fut, [] if stats else None])
        self._room.set()
        self._writer.write(line)
        return fut

    async def _request(self, line: bytes, stats: bool = False, bounded: bool = True):
        """Send a request and wait for its reply, at most request_timeout
        (unless not bounded): then BusgateError("timeout"). The request
        stays in the queue of those awaiting a reply, so that the late
        reply, if one comes, is dropped instead of answering the next."""
        fut = self._send(line, stats)
        timeout = self.request_timeout if bounded else None
        try:
            reply = await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            verb = line.split(b"\n", 1)[0].split(b" ", 1)[0].decode("ascii", "replace")
            raise BusgateError("timeout", "no reply from busgated in %g s to %s"
                               % (timeout, verb)) from None
        if isinstance(reply, p.Reply) and reply.kind == "-ERR":
            raise BusgateError(reply.code, reply.text)
        return reply

    # ----------------------------------------------------- dispatching

    async def _dispatch_loop(self) -> None:
        await self._started.wait()
        while not self._stopping:   # a handler may have called stop()
            ev = await self._next_event()
            if ev is _ENDED:
                self._done.set()    # start() returns
                return
            for handler, args in self._handlers_for(ev):
                try:
                    await handler(*args)
                except asyncio.CancelledError:
                    # (Before "except Exception": in 3.7 it is one.)
                    if asyncio.current_task().cancels:
                        raise       # stop(), or the loop's shutdown
                    # The handler awaited something cancelled: a failure
                    # like any other, not the end of the dispatcher.
                    log.exception("busgate: handler %r failed", handler)
                except Exception:
                    log.exception("busgate: handler %r failed", handler)

    def _handlers_for(self, ev):
        return [(h, (ev,)) for h in list(self.event_handlers)] + self._upstream_handlers(ev)

    def _upstream_handlers(self, ev):
        if isinstance(ev, p.Data):
            args = (ev.user, ev.host, ev.feed, ev.topic, ev.packets or None, ev.is_image)
            return [(h, args) for h in list(self.data_handlers)]
        if isinstance(ev, p.Notification):
            args = (ev.client_id, ev.user, ev.host, ev.feed, ev.topic, ev.is_add)
            return [(h, args) for h in list(self.notification_handlers)]
        if isinstance(ev, p.AuthRequest):
            # Upstream's order: client_id, host, user, feed, topic.
            args = (ev.client_id, ev.host, ev.user, ev.feed, ev.topic)
            return [(h, args) for h in list(self._authorization_handlers)]
        lists = {p.BusState: self.bus_state_handlers, p.Link: self.link_handlers,
                 p.Error: self.error_handlers, p.Revoked: self.revoked_handlers}
        return [(h, tuple(ev)) for h in list(lists[type(ev)])]

    async def start(self) -> None:
        """Deliver events to the handlers until stop() (or, without
        reconnect, until the session has ended and every event received,
        the closing Error and Link ones included, has been handled)."""
        self._started.set()
        await self._done.wait()
        if self._stopped is not None:
            await self._stopped     # the client's tasks have ended

    def stop(self) -> "asyncio.Future":
        """End the session and the client's tasks; start() returns.

        A plain method, as upstream's (apps call client.stop() from a
        handler or a signal handler without await), which returns an
        awaitable: `await client.stop()` waits until the tasks have ended.
        Called from a handler, the handler's own task (the dispatcher) is
        neither cancelled nor waited for, else it would wait for itself:
        it ends once the handler returns."""
        if self._stopped is None:
            self._stopping = True
            if self._writer is not None:
                self._writer.close()
            self._done.set()
            me = asyncio.current_task()
            others = [t for t in self._tasks if t is not me]
            for t in others:
                t.cancel()
            self._stopped = asyncio.ensure_future(self._stop(others))
        return self._stopped

    async def _stop(self, tasks: list) -> None:
        await asyncio.gather(*tasks, return_exceptions=True)
        self._lost("stopped")

    # ------------------------------------------------------- requests

    def _all_feeds_changed(self, has_handlers: bool) -> None:
        """authorization_handlers gained its first handler or lost its last:
        take or give back the all-feeds registration (a list change cannot
        wait: the request is written now, its reply checked later). While
        disconnected nothing is sent; the restore looks at the list."""
        if self._writer is None:
            return
        fut = self._send(p.command("AUTHORIZER" if has_handlers else "UNAUTHORIZER"))
        fut.add_done_callback(self._all_feeds_reply)

    def _all_feeds_reply(self, fut: asyncio.Future) -> None:
        reply = None if fut.cancelled() or fut.exception() else fut.result()
        if reply is None or reply.kind != "-ERR":
            return   # OK, or the session was lost: the restore registers
        # already-/not-authorizer: a restore raced the change; same result.
        if reply.code not in ("already-authorizer", "not-authorizer"):
            self._queue(p.Error(reply.code, "authorization handlers: " + reply.text))

    async def _remembered(self, table: set, key, add: bool, line: bytes) -> None:
        """A request a reconnect must restore: recorded even while
        disconnected (the restore sends it), forgotten if refused."""
        (table.add if add else table.discard)(key)
        try:
            await self._request(line)
        except BusgateError as e:
            # The session ended before the daemon answered (a closing
            # error is one said first): kept, as if made while disconnected.
            if _session_ended(e):
                return
            if add and not e.code.startswith("already"):
                table.discard(key)
            raise

    async def _counted(self, table: dict, key, add: bool, line: bytes) -> None:
        """A subscription or notification, counted as upstream's
        distributor counts a client's: the first add is sent, the last
        remove too; the others only count, and a remove of one never
        made does nothing (upstream never raises for either). Recorded
        even while disconnected, as _remembered."""
        n = table.get(key, 0)
        if add:
            table[key] = n + 1
            if n:
                return
        elif n != 1:
            if n:
                table[key] = n - 1
            return
        else:
            del table[key]
        try:
            await self._request(line)
        except BusgateError as e:
            # Ended with the session: kept (restored). already-/not-: a
            # restore raced the request, the result is the same.
            if _session_ended(e) or e.code in _SAME_RESULT:
                return
            if add:
                table.pop(key, None)
            raise

    async def add_subscription(self, feed: str, topic: str) -> None:
        await self._counted(self._subscriptions, (feed, topic), True,
                            p.command("SUB", feed, topic))

    async def remove_subscription(self, feed: str, topic: str) -> None:
        await self._counted(self._subscriptions, (feed, topic), False,
                            p.command("UNSUB", feed, topic))

    async def add_notification(self, feed: str) -> None:
        await self._counted(self._notifications, feed, True, p.command("NOTIFY", feed))

    async def remove_notification(self, feed: str) -> None:
        await self._counted(self._notifications, feed, False, p.command("UNNOTIFY", feed))

    async def add_authorizer(self, feed: str) -> None:
        """Receive the feed's authorization requests. Upstream has no such
        call (a bus client gets them all); the gateway routes by feed."""
        await self._remembered(self._authorizers, feed, True, p.command("AUTHORIZER", feed))

    async def remove_authorizer(self, feed: str) -> None:
        await self._remembered(self._authorizers, feed, False, p.command("UNAUTHORIZER", feed))

    async def publish(self, feed: str, topic: str, is_image: bool,
                      data_packets: Optional[List[DataPacket]],
                      content_type: Optional[str] = None) -> None:
        """content_type (busgate's own; bus protocol 6 only, else
        BusgateError syntax): sent as the message's content type, which the
        bus carries instead of is_image."""
        await self._request(p.command("PUB", feed, topic, _flag(is_image),
                                      extra=_typed(content_type), packets=data_packets or []))

    async def send(self, client_id, feed: str, topic: str, is_image: bool,
                   data_packets: Optional[List[DataPacket]],
                   content_type: Optional[str] = None) -> None:
        await self._request(p.command("SEND", p.client_id_token(client_id), feed, topic,
                                      _flag(is_image), extra=_typed(content_type),
                                      packets=data_packets or []))

    async def authorize(self, client_id, feed: str, topic: str,
                        is_authorization_required: bool,
                        entitlements: Optional[Set[int]] = None) -> None:
        words = [b"required" if is_authorization_required else b"not-required"]
        if is_authorization_required and entitlements:
            words.append(b",".join(b"%d" % e for e in sorted(entitlements)))
        await self._request(p.command("AUTHORIZE", p.client_id_token(client_id),
                                      feed, topic, extra=words))

    async def set_name(self, name: str) -> None:
        """Label the session (NAME): busgated shows the name in STATS
        SESSIONS (app=) and its log lines about the session. 1 to 64 bytes
        of UTF-8; it grants nothing. Said again after a reconnect; while
        disconnected, only recorded."""
        self.app_name = _checked_name(name)
        if self._writer is not None:
            await self._request(p.command("NAME", name))

    async def ping(self, token: str = "") -> str:
        reply = await self._request(p.word_command("PING", token, "a ping token"))
        return reply.text

    async def stats(self, view: Optional[str] = None) -> dict:
        """STATS as {name: value}; the per-session lines under 'session'.
        view: "SESSIONS" (the session lines) or "LINK" (the bus link's
        details), as busgate sessions and busgate stats show them."""
        line = p.word_command("STATS", view, "a STATS view")
        out: dict = {"session": []}
        for r in await self._request(line, stats=True):
            if r.code == "session":
                out["session"].append(r.text)
            else:
                out[r.code] = r.text
        return out


# Refusals of a counted request that leave what the app asked for.
_SAME_RESULT = ("already-subscribed", "not-subscribed", "already-notifying", "not-notifying")


def _session_ended(e: BusgateError) -> bool:
    """The request failed because the session ended, not on its merits."""
    return e.code == "disconnected" or e.code in p.CLOSING_CODES


def _checked_name(name: str) -> str:
    """An app name as busgated takes it, checked before it is sent: one it
    refused would be said again, and refused, at each reconnect."""
    try:
        n = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        n = 0
    if not 1 <= n <= MAX_APP_NAME:
        raise BusgateError("bad-name", "an app name is 1 to %d bytes of UTF-8" % MAX_APP_NAME)
    return name


def _typed(content_type: Optional[str]) -> List[bytes]:
    return [] if content_type is None else [b"type=" + p.escape(content_type)]


def _flag(is_image: bool) -> bytes:
    return b"image" if is_image else b"delta"
