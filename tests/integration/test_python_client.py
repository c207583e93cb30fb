#!/usr/bin/env python3
"""The python package (python/busgate) against the real busgated and the
test bus: every verb and event, the upstream README's examples, restart,
slow consumer, the README example."""

import asyncio
import os
import re
import socket
import subprocess
import sys
import time
import unittest
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from routerkit import GatewayCase, TIMEOUT, uniq, wait_until  # noqa: E402

PYDIR = os.path.join(os.path.dirname(os.path.dirname(HERE)), "python")
sys.path.insert(0, PYDIR)
import busgate  # noqa: E402
from busgate import BusgateError, CallbackClient, DataPacket  # noqa: E402
from busgate import protocol  # noqa: E402

EXAMPLES = os.path.join(PYDIR, "examples")

# The client's WARNINGs (sessions lost, closing errors) are what many
# tests provoke: kept out of the test output (assertLogs still sees them).
import logging  # noqa: E402
logging.getLogger("busgate").addHandler(logging.NullHandler())


class Recorder:
    """An asyncio client whose every event lands in a list, with waits."""

    def __init__(self, client):
        self.client = client
        self.events = []
        client.event_handlers.append(self._record)
        self.task = asyncio.ensure_future(client.start())

    async def _record(self, ev):
        self.events.append(ev)

    async def wait(self, pred, what="an event"):
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            for ev in self.events:
                if pred(ev):
                    self.events.remove(ev)
                    return ev
            await asyncio.sleep(0.01)
        raise AssertionError("timed out waiting for %s; got %r" % (what, self.events))

    async def data(self, topic):
        return await self.wait(lambda e: isinstance(e, busgate.Data) and e.topic == topic,
                               "DATA on %s" % topic)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 4 * TIMEOUT))


class ProtocolTest(unittest.TestCase):
    """The escaping and formatting of doc/PROTOCOL.md's table."""

    def test_escape_table(self):
        table = {"prices": b"prices", "my feed": b"my%20feed", "100%": b"100%25",
                 'say "hi"': b"say%20%22hi%22", "café": "café".encode(),
                 "a\tb": b"a%09b", "": b'""', '""': b"%22%22"}
        for name, token in table.items():
            self.assertEqual(protocol.escape(name), token)
            self.assertEqual(protocol.unescape(token).decode(), name)

    def test_lines_cut_short_are_protocol_errors(self):
        # Not an IndexError, which would end the client's reader task
        # instead of dropping the session and connecting again.
        uid = b"00000000-0000-0000-0000-000000000000"
        for line in (b"BUS", b"REVOKED subscribe f", b"NOTIFICATION add", b"AUTHREQ",
                     b"DATA f t", b"NOTIFICATION add " + uid + b" u h",
                     b"AUTHREQ " + uid + b" u h", b"DATA f t u%4 h delta multicast",
                     b"DATA f t u%+1 h delta multicast", b"DATA f t u%zz h delta multicast"):
            with self.assertRaises(BusgateError) as cm:
                protocol.parse_line(line)
            self.assertEqual(cm.exception.code, "protocol")

    def test_bad_packet_specs_are_refused(self):
        # A negative or signed length would desynchronise the payload
        # block; a huge one would have the reader buffer it.
        for spec in (b"-1", b"+1", b"1_0", b"1:-2", b"x", b"%d" % (protocol.MAX_PAYLOAD + 1)):
            with self.assertRaises(ValueError):
                protocol.payload_length(b"DATA f t u h delta multicast " + spec)
        self.assertEqual(protocol.payload_length(b"DATA f t u h delta multicast 3:1,2 0"), 3)

    def test_data_packets_are_hashable(self):
        # Upstream's are; equal packets hash alike (None data is b"").
        packets = {DataPacket({1, 2}, b"x"), DataPacket({2, 1}, b"x"),
                   DataPacket(None, None), DataPacket(None, b"")}
        self.assertEqual(len(packets), 2)

    def test_payload_is_byte_counted(self):
        line = protocol.command("PUB", "f", "t", b"image",
                                packets=[DataPacket({2, 1}, "é".encode()), DataPacket()])
        self.assertEqual(line, "PUB f t image 2:1,2 0\né\n".encode())


GREETING = b"HELLO busgate 9.9 proto=1 max_line=65536 bus=up\n"


async def until(pred, settle=0.0):
    """Wait until pred() holds (at most TIMEOUT), then settle seconds more."""
    deadline = time.monotonic() + TIMEOUT
    while not pred() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    await asyncio.sleep(settle)


class UpstreamNamesTest(unittest.TestCase):
    def test_upstream_exports(self):
        """What an upstream app imports from the package (its __init__'s
        names but Client, which busgate does not offer: see README)."""
        from busgate import (AuthorizationHandler, BasicAuthenticator,  # noqa: F401
                             DataHandler, NotificationHandler, NullAuthenticator)
        from busgate.authentication import (BasicAuthenticator as B,  # noqa: F401
                                            NullAuthenticator as N, TokenAuthenticator)
        self.assertIs(B, BasicAuthenticator)
        self.assertIs(N, NullAuthenticator)
        for name in ("NullAuthenticator", "BasicAuthenticator", "DataHandler",
                     "NotificationHandler", "AuthorizationHandler"):
            self.assertIn(name, busgate.__all__)


def recording_daemon(lines, closing_at_sub=None, linger=0.0):
    """A fake busgated that records each session's lines (lines[i]) and
    answers +OK; but the SUB of session number closing_at_sub with -ERR
    shutting-down, closing linger seconds later (busgated stopping)."""
    async def serve(reader, writer):
        n = len(lines)
        lines.append([])
        writer.write(GREETING)
        while True:
            line = await reader.readline()
            if not line:
                return
            lines[-1].append(line)
            if n == closing_at_sub and line.startswith(b"SUB "):
                writer.write(b"-ERR shutting-down busgated is stopping\n")
                await writer.drain()
                await asyncio.sleep(linger)
                writer.close()
                return
            writer.write(b"+OK\n")
    return serve


class FakeDaemonTest(unittest.TestCase):
    """The client against a scripted stand-in for busgated."""

    def setUp(self):
        self.path = os.path.join(os.environ.get("TMPDIR", "/tmp"),
                                 "busgate-pyfake-%d.sock" % os.getpid())
        self.addCleanup(self.unlink)

    def unlink(self):
        if os.path.exists(self.path):
            os.unlink(self.path)

    async def serving(self, serve):
        """The fake daemon: serve(reader, writer) per connection, whose
        writer is closed when it returns."""
        async def session(reader, writer):
            try:
                await serve(reader, writer)
            finally:
                writer.close()
        return await asyncio.start_unix_server(session, self.path)

    async def started(self, **kwargs):
        """A started client of the fake daemon, and the link states it hears."""
        client = await CallbackClient.create(path=self.path, **kwargs)
        links = []

        async def on_link(state, reason):
            links.append(state)
        client.link_handlers.append(on_link)
        client.task = asyncio.ensure_future(client.start())
        return client, links

    async def stopped(self, client, server):
        await client.stop()
        client.task.cancel()
        server.close()

    def test_restore_cut_short_is_not_reported_up(self):
        """busgated goes away, and the next one goes away too while the
        client restores its subscription: the app is told down, down, then
        up once the third session has the subscription, never up while the
        client is in fact disconnected."""
        async def go():
            sessions = []

            async def serve(reader, writer):
                n = len(sessions)
                sessions.append(writer)
                writer.write(GREETING)
                while True:
                    line = await reader.readline()
                    if not line or (n == 1 and line.startswith(b"SUB ")):
                        writer.close()      # the second session: cut short
                        return
                    writer.write(b"+OK\n")

            server = await self.serving(serve)
            client, links = await self.started(backoff_max=0.1)
            errors = []

            async def on_error(code, message):
                errors.append((code, message))
            client.error_handlers.append(on_error)
            await client.add_subscription("F", "T")
            sessions[0].close()
            await until(lambda: "up" in links, settle=0.2)  # anything late shows
            self.assertEqual(links, ["down", "down", "up"])
            self.assertEqual(errors, [])
            self.assertEqual(len(sessions), 3)
            await self.stopped(client, server)
        run(go())

    def test_registration_cut_by_a_closing_error_is_restored(self):
        """busgated stops (-ERR shutting-down, then closes) while a SUB is
        in flight: as when the connection just drops, the subscription is
        kept and the next session gets it with the restore."""
        async def go():
            lines = []
            server = await self.serving(recording_daemon(lines, closing_at_sub=0))
            client, links = await self.started(backoff_max=0.1)
            await client.add_subscription("F", "T")     # no exception: kept
            await until(lambda: "up" in links)
            self.assertEqual(links, ["down", "up"])
            self.assertEqual(lines[1], [b"SUB F T\n"])
            await self.stopped(client, server)
        run(go())

    def test_failed_create_leaves_nothing_running(self):
        """create() that fails after the greeting (here busgated refuses the
        app's NAME) closes what it started: no reader task reconnecting in
        the background for a client the app never got."""
        async def go():
            sessions = []

            async def serve(reader, writer):
                sessions.append(writer)
                writer.write(GREETING)
                while await reader.readline():
                    writer.write(b"-ERR bad-name not this one\n")

            server = await self.serving(serve)
            with self.assertRaises(BusgateError) as cm:
                await CallbackClient.create(path=self.path, app_name="x", backoff_max=0.05)
            self.assertEqual(cm.exception.code, "bad-name")
            await asyncio.sleep(0.3)
            self.assertEqual(len(sessions), 1)
            self.assertEqual(self.client_tasks(), [])
            server.close()
        run(go())

    def test_events_queued_while_a_reply_is_awaited_are_bounded(self):
        """A reply is awaited (so reading cannot wait for the app) while
        events pile up ahead of it: past max_queued_bytes the session ends
        as a slow consumer's, instead of the app's memory taking all the
        daemon sends (a script that publishes in a loop while subscribed).
        The queue is still over the bound when the next session restores
        the subscription: that session is not cut again before an event
        comes (as libbusgate)."""
        async def go():
            flood = b"".join(b"DATA F T u h delta multicast 8\n%08d\n" % i
                             for i in range(5000))     # and no PONG
            sessions = []

            async def serve(reader, writer):
                sessions.append(writer)
                writer.write(GREETING)
                while True:
                    line = await reader.readline()
                    if not line:
                        return
                    if line.startswith(b"PING flood") and len(sessions) == 1:
                        writer.write(flood)
                    else:
                        writer.write(b"+OK\n")

            server = await self.serving(serve)
            client = await CallbackClient.create(path=self.path, backoff_max=0.1,
                                                 max_queued_bytes=16384)
            await client.add_subscription("F", "T")
            with self.assertRaises(BusgateError) as cm:
                await asyncio.wait_for(client.ping("flood"), TIMEOUT / 4)
            self.assertEqual(cm.exception.code, "disconnected")
            await until(lambda: len(sessions) == 2, settle=0.5)
            kinds = []
            while not client._events.empty():
                ev = await client._next_event()
                kinds.append(ev.state if isinstance(ev, busgate.Link) else type(ev).__name__)
            self.assertEqual(kinds[-3:], ["Error", "down", "up"])
            self.assertEqual(set(kinds[:-3]), {"Data"})
            self.assertLess(len(kinds), 5000)
            self.assertEqual(len(sessions), 2)
            await client.stop()
            server.close()
        run(go())

    def test_greeting_deadline(self):
        """A socket that takes the connection but never greets: create()
        fails with "timeout" after connect_timeout, and a reconnect gives
        up on such a session and tries the next one (as libbusgate's
        greeting deadline)."""
        async def mute():
            import socket
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.bind(self.path)
            listener.listen(4)          # connections wait, never accepted
            try:
                t0 = time.monotonic()
                with self.assertRaises(BusgateError) as cm:
                    await CallbackClient.create(path=self.path, connect_timeout=0.3)
                self.assertEqual(cm.exception.code, "timeout")
                self.assertLess(time.monotonic() - t0, 0.3 + TIMEOUT / 2)
            finally:
                listener.close()
                self.unlink()

        async def silent_second():
            sessions = []

            async def serve(reader, writer):
                sessions.append(writer)
                if len(sessions) != 2:      # the second never greets
                    writer.write(GREETING)
                while await reader.readline():
                    writer.write(b"+OK\n")

            server = await self.serving(serve)
            client, links = await self.started(backoff_max=0.1, connect_timeout=0.3)
            await client.add_subscription("F", "T")
            sessions[0].close()
            await until(lambda: "up" in links)
            self.assertEqual(links, ["down", "up"])
            self.assertEqual(len(sessions), 3)
            await client.ping()         # the third session answers
            await self.stopped(client, server)
        run(mute())
        run(silent_second())

    def data_server(self, count=1, then_close=False):
        """A fake daemon that answers every request +OK and sends count
        DATA messages on F T once the client subscribes (then closes the
        session if then_close)."""
        async def serve(reader, writer):
            writer.write(GREETING)
            while True:
                line = await reader.readline()
                if not line:
                    return
                writer.write(b"+OK\n")
                if line.startswith(b"SUB "):
                    for i in range(count):
                        writer.write(b"DATA F T u h delta multicast 1\n%d\n" % (i % 10))
                    if then_close:
                        await writer.drain()
                        return
        return self.serving(serve)

    @staticmethod
    def client_tasks():
        return [t for t in asyncio.all_tasks() if t is not asyncio.current_task()
                and t._coro.__qualname__.startswith("CallbackClient")]  # 3.7: no get_coro

    def test_stop_from_a_handler(self):
        """Upstream's stop() is a plain method an app calls from a handler
        without await; busgate's docs await it. Both end start(), from
        inside a handler too (no deadlock on the handler's own task), and
        leave no task running."""
        async def go(awaited):
            server = await self.data_server(3)
            client = await CallbackClient.create(path=self.path)
            seen = []

            async def on_data(user, host, feed, topic, data_packets, is_image):
                seen.append(data_packets[0].data)
                if awaited:
                    await client.stop()
                else:
                    client.stop()
                seen.append("after stop")
            client.data_handlers.append(on_data)
            await client.add_subscription("F", "T")
            await asyncio.wait_for(client.start(), TIMEOUT)
            self.assertEqual(seen, [b"0", "after stop"])
            self.assertEqual(self.client_tasks(), [])
            server.close()
        for awaited in (False, True):
            with self.subTest(awaited=awaited):
                run(go(awaited))

    def test_stop_without_await_from_outside(self):
        """client.stop() without await (upstream's synchronous call, e.g.
        from a signal handler) ends start(); awaiting it again is harmless."""
        async def go():
            server = await self.data_server()
            client = await CallbackClient.create(path=self.path)
            task = asyncio.ensure_future(client.start())
            await asyncio.sleep(0.1)
            client.stop()
            await asyncio.wait_for(task, TIMEOUT)
            await client.stop()
            self.assertEqual(self.client_tasks(), [])
            server.close()
        run(go())

    def test_handler_cancelled_error_does_not_end_dispatch(self):
        """A handler that lets a CancelledError out (it awaited something
        cancelled) fails like any handler: logged, and the next events are
        still delivered; only the dispatcher's own cancel ends it."""
        async def go():
            server = await self.data_server(3)
            client = await CallbackClient.create(path=self.path)
            seen = []

            async def on_data(user, host, feed, topic, data_packets, is_image):
                seen.append(data_packets[0].data)
                if len(seen) == 1:
                    helper = asyncio.ensure_future(asyncio.sleep(10))
                    helper.cancel()
                    await helper
            client.data_handlers.append(on_data)
            task = asyncio.ensure_future(client.start())
            with self.assertLogs("busgate", "ERROR"):
                await client.add_subscription("F", "T")
                await until(lambda: len(seen) == 3)
            self.assertEqual(seen, [b"0", b"1", b"2"])
            await asyncio.wait_for(client.stop(), TIMEOUT)
            await asyncio.wait_for(task, TIMEOUT)
            self.assertEqual(self.client_tasks(), [])
            server.close()
        run(go())

    def test_stop_while_a_handler_runs(self):
        """stop() cancels a running handler and returns promptly (on
        Python 3.7 CancelledError is an Exception: the dispatcher must
        not take the cancel for a handler's failure and go on)."""
        async def go():
            server = await self.data_server(2)
            client = await CallbackClient.create(path=self.path)
            running = []

            async def on_data(user, host, feed, topic, data_packets, is_image):
                running.append(1)
                await asyncio.sleep(30)
            client.data_handlers.append(on_data)
            task = asyncio.ensure_future(client.start())
            await client.add_subscription("F", "T")
            await until(lambda: running)
            await asyncio.wait_for(client.stop(), TIMEOUT / 2)
            await asyncio.wait_for(task, TIMEOUT / 2)
            self.assertEqual(running, [1])
            self.assertEqual(self.client_tasks(), [])
            server.close()
        run(go())

    def test_upstream_create_arguments(self):
        """create() takes upstream 3.0.1's keywords: authenticator, ssl and
        monitor_heartbeat (accepted and ignored: busgated holds the
        credentials and watches the bus heartbeat)."""
        async def go():
            server = await self.data_server()
            from busgate.authentication import BasicAuthenticator
            for auth in (None, BasicAuthenticator("john.doe@example.com", "pa$$word")):
                client = await CallbackClient.create(path=self.path, authenticator=auth,
                                                     ssl=None, monitor_heartbeat=True)
                await client.stop()
            server.close()
        run(go())

    def test_start_delivers_what_came_before_the_end(self):
        """Without reconnect, a session that ends by itself: start() hands
        the handlers what was received, then the end (link down), and
        only then returns; the client leaves no task behind."""
        async def go():
            server = await self.data_server(50, then_close=True)
            client = await CallbackClient.create(path=self.path, reconnect=False)
            seen, links = [], []

            async def on_data(user, host, feed, topic, data_packets, is_image):
                seen.append(data_packets[0].data)

            async def on_link(state, reason):
                links.append(state)
            client.data_handlers.append(on_data)
            client.link_handlers.append(on_link)
            await client.add_subscription("F", "T")
            await asyncio.sleep(0.3)        # the session has ended meanwhile
            await asyncio.wait_for(client.start(), TIMEOUT)
            self.assertEqual((len(seen), links), (50, ["down"]))
            await asyncio.sleep(0)
            self.assertEqual(self.client_tasks(), [])
            server.close()
        run(go())

    def in_thread(self, server_factory):
        """Serve the fake daemon from a thread (for the blocking API); the
        cleanup stops it."""
        import threading
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        holder = []

        def main():
            asyncio.set_event_loop(loop)
            holder.append(loop.run_until_complete(server_factory()))
            ready.set()
            loop.run_forever()
        thread = threading.Thread(target=main, daemon=True)
        thread.start()
        ready.wait(TIMEOUT)

        def stop():
            loop.call_soon_threadsafe(holder[0].close)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(TIMEOUT)
            loop.close()
        self.addCleanup(stop)

    def test_blocking_events_end_with_the_session(self):
        """Blocking API without reconnect: once the session has ended and
        its events are taken, events() ends (it waited for ever)."""
        import threading
        self.in_thread(lambda: self.data_server(3, then_close=True))
        bus = busgate.connect(self.path, reconnect=False)
        bus.subscribe("F", "T")
        kinds = []

        def script():
            for ev in bus.events():     # no timeout: must end by itself
                kinds.append(ev.state if isinstance(ev, busgate.Link) else type(ev).__name__)
            kinds.append(bus.next_event())
            kinds.append(bus.next_event(timeout=0))
        thread = threading.Thread(target=script, daemon=True)
        thread.start()
        thread.join(TIMEOUT)
        self.assertFalse(thread.is_alive(), "events() did not end: %r" % kinds)
        self.assertEqual(kinds, ["Data", "Data", "Data", "down", None, None])
        bus.close()

    def held_replies(self, answered=1):
        """A fake daemon that answers the first `answered` requests it reads
        (create()'s PING) and then holds its replies: none is sent
        until self.release is set, and then all of them, late, in order
        (a PING's PONG carries its token). self.requests: what it read."""
        import threading
        self.release = threading.Event()
        self.requests = []

        def reply(line):
            if line.startswith(b"PING"):
                return b"PONG" + line[4:]
            return b"STAT a 1\nEND\n" if line.startswith(b"STATS") else b"+OK\n"

        async def serve(reader, writer):
            writer.write(GREETING)
            held = []
            while True:
                line = await reader.readline()
                if not line:
                    return
                self.requests.append(line)
                if line.startswith(b"PUB "):    # one packet: its block
                    await reader.readexactly(int(line.split()[-1]) + 1)
                held.append(reply(line))
                if len(self.requests) <= answered or self.release.is_set():
                    writer.write(b"".join(held))
                    held.clear()
        return serve

    def test_request_timeout(self):
        """A daemon that never answers: each request raises
        BusgateError("timeout") after request_timeout (create()'s first
        round trip too), the session stays up, a subscription that timed
        out is not counted, and the replies that come late are dropped, not
        taken as the answers of later requests."""
        async def go():
            server = await self.serving(self.held_replies(answered=0))
            t0 = time.monotonic()
            with self.assertRaises(BusgateError) as cm:
                await CallbackClient.create(path=self.path, request_timeout=0.2)
            self.assertEqual(cm.exception.code, "timeout")
            self.assertRegex(str(cm.exception), r"no reply from busgated in 0\.2 s to PING")
            self.assertLess(time.monotonic() - t0, TIMEOUT / 2)
            self.assertEqual(self.client_tasks(), [])
            server.close()
            self.unlink()

            server = await self.serving(self.held_replies(answered=1))
            client, links = await self.started(request_timeout=0.2)
            self.assertEqual(client.request_timeout, 0.2)
            calls = [("SUB", client.add_subscription("F", "T")),
                     ("PUB", client.publish("F", "T", False, [DataPacket(None, b"x")])),
                     ("AUTHORIZE", client.authorize(uuid.uuid4(), "F", "T", False)),
                     ("PING", client.ping("lost")),
                     ("STATS", client.stats())]
            for verb, call in calls:
                t0 = time.monotonic()
                with self.assertRaises(BusgateError) as cm:
                    await call
                self.assertEqual(cm.exception.code, "timeout")
                self.assertIn(" to %s" % verb, cm.exception.message)
                self.assertLess(time.monotonic() - t0, TIMEOUT / 2)
            self.assertEqual(client._subscriptions, {})     # not counted
            self.assertEqual(links, [])                     # still up
            self.release.set()
            client.request_timeout = None                   # the attribute too
            self.assertEqual(await client.ping("found"), "found")
            self.assertEqual(await client.stats(), {"session": [], "a": "1"})
            await client.add_subscription("F", "T")         # made again: sent
            self.assertEqual(client._subscriptions, {("F", "T"): 1})
            self.assertEqual([r.split(b" ")[0].strip() for r in self.requests],
                             [b"PING", b"SUB", b"PUB", b"AUTHORIZE", b"PING", b"STATS",
                              b"PING", b"STATS", b"SUB"])
            self.assertEqual(links, [])
            await self.stopped(client, server)
        run(go())

    def test_request_timeout_default_and_blocking(self):
        """The default bound (10 s, libbusgate's), the upstream create()
        signature unchanged, and the blocking API's keyword."""
        self.assertEqual(CallbackClient("/nonexistent").request_timeout, 10.0)
        self.in_thread(lambda: self.serving(self.held_replies(answered=1)))
        with busgate.connect(self.path, request_timeout=0.2) as bus:
            for call in (lambda: bus.subscribe("F", "T"), lambda: bus.stats(),
                         lambda: bus.publish("F", "T", b"x")):
                with self.assertRaises(BusgateError) as cm:
                    call()
                self.assertEqual(cm.exception.code, "timeout")
            self.release.set()
            self.assertEqual(bus.ping("late"), "late")

    def test_create_refused_after_the_greeting(self):
        """busgated at listen.max_sessions greets, says -ERR
        too-many-sessions and closes: create() raises that, as for a
        refused connect, rather than handing back a client that never
        gets data; nothing is left running."""
        async def go():
            sessions = []

            async def serve(reader, writer):
                sessions.append(writer)
                writer.write(GREETING + b"-ERR too-many-sessions listen.max_sessions 1 reached\n")
            server = await self.serving(serve)
            with self.assertRaises(BusgateError) as cm:
                await CallbackClient.create(path=self.path, backoff_max=0.05)
            self.assertEqual(cm.exception.code, "too-many-sessions")
            await asyncio.sleep(0.3)
            self.assertEqual(len(sessions), 1)
            self.assertEqual(self.client_tasks(), [])
            server.close()
        run(go())

    def refusing_server(self, sessions, accepted=1):
        """A fake daemon that takes the first sessions (answering +OK) and
        refuses the next ones right after the greeting."""
        async def serve(reader, writer):
            sessions.append(writer)
            writer.write(GREETING)
            if len(sessions) > accepted:
                writer.write(b"-ERR too-many-sessions listen.max_sessions 1 reached\n")
                return
            while True:
                line = await reader.readline()
                if not line:
                    return
                writer.write(b"+OK\n")
        return self.serving(serve)

    def test_backoff_grows_over_refused_sessions(self):
        """Sessions refused right after their greeting: the reconnect
        delay keeps growing (it restarted from backoff_min at each
        greeting: 20 reconnects a second)."""
        async def go():
            sessions = []
            server = await self.refusing_server(sessions)
            client, links = await self.started(backoff_min=0.05, backoff_max=0.4)
            await client.add_subscription("F", "T")
            sessions[0].close()
            await asyncio.sleep(1.5)
            # 0.05 + 0.1 + 0.2 + 0.4 + 0.4 + 0.4: 6 at most (else ~30)
            self.assertLessEqual(len(sessions) - 1, 6)
            self.assertGreaterEqual(len(sessions) - 1, 3)
            self.assertNotIn("up", links)
            await self.stopped(client, server)
        run(go())

    def test_restore_tasks_are_not_kept(self):
        """Each reconnect's restore task is dropped once done (they were
        kept until stop(): memory grew with every reconnect)."""
        async def go():
            sessions = []
            server = await self.refusing_server(sessions)
            client, links = await self.started(backoff_min=0.001, backoff_max=0.001)
            await client.add_subscription("F", "T")
            sessions[0].close()
            await until(lambda: len(sessions) > 20, settle=0.05)
            self.assertLessEqual(len(client._tasks), 3)
            await self.stopped(client, server)
        run(go())

    def test_closing_error_during_restore_keeps_registrations(self):
        """The restore's SUB is answered by a closing error (busgated
        stopping) before the session closes: the subscription is kept for
        the next session, not revoked, and no "up" is said for the dying
        session."""
        async def go():
            lines = []
            # The restore's SUB: the close comes 0.3 s after the -ERR.
            server = await self.serving(recording_daemon(lines, closing_at_sub=1, linger=0.3))
            client, links = await self.started(backoff_max=0.1)
            revoked = []

            async def on_revoked(*args):
                revoked.append(args)
            client.revoked_handlers.append(on_revoked)
            await client.add_subscription("F", "T")
            client._writer.close()          # the first session is lost
            await until(lambda: len(lines) == 3 and "up" in links, settle=0.2)
            self.assertEqual(links, ["down", "down", "up"])
            self.assertEqual(revoked, [])
            self.assertEqual(lines[2], [b"SUB F T\n"])
            await self.stopped(client, server)
        run(go())

    def test_subscriptions_are_counted(self):
        """As upstream's distributor: a client's subscriptions to a topic
        (and notifications on a feed) are counted; SUB on the first,
        UNSUB on the last, and a repeated add or a remove of nothing does
        not raise."""
        async def go():
            sessions = []
            server = await self.serving(recording_daemon(sessions))
            client, links = await self.started()
            lines = sessions[0]
            await client.add_subscription("F", "T")
            await client.add_subscription("F", "T")
            await client.remove_subscription("F", "T")
            self.assertEqual(lines[1:], [b"SUB F T\n"])     # still subscribed
            await client.remove_subscription("F", "T")
            await client.remove_subscription("F", "T")      # not subscribed: no error
            await client.remove_subscription("F", "other")
            await client.add_notification("F")
            await client.add_notification("F")
            await client.remove_notification("F")
            await client.remove_notification("F")
            await client.remove_notification("F")
            self.assertEqual(lines[1:], [b"SUB F T\n", b"UNSUB F T\n",
                                         b"NOTIFY F\n", b"UNNOTIFY F\n"])
            await self.stopped(client, server)
        run(go())

    def test_bus_state_changed_across_a_reconnect(self):
        """The bus went down while busgated restarted: the new greeting
        says so, and bus_state_handlers hear it (they heard nothing); while
        disconnected, bus_state is not the stale "up"."""
        async def go():
            sessions = []

            async def serve(reader, writer):
                sessions.append(writer)
                writer.write(GREETING if len(sessions) == 1
                             else GREETING.replace(b"bus=up", b"bus=down"))
                while await reader.readline():
                    writer.write(b"+OK\n")
            server = await self.serving(serve)
            client, links = await self.started(backoff_min=0.3, backoff_max=0.3)
            states, while_down = [], []

            async def on_bus(state, reason):
                states.append(state)

            async def on_link(state, reason):
                if state == "down":
                    while_down.append(client.bus_state)
            client.bus_state_handlers.append(on_bus)
            client.link_handlers.append(on_link)
            self.assertEqual(client.bus_state, "up")
            sessions[0].close()
            await until(lambda: "up" in links, settle=0.1)
            self.assertEqual((links, while_down, states), (["down", "up"], ["down"], ["down"]))
            self.assertEqual(client.bus_state, "down")
            await self.stopped(client, server)
        run(go())

    def test_closing_errors_and_lost_sessions_are_logged(self):
        """An upstream-style app has no error or link handlers: a
        slow-consumer cut and the session's loss are logged (WARNING), so
        that missing data leaves a trace."""
        async def go():
            async def serve(reader, writer):
                writer.write(GREETING)
                await reader.readline()
                writer.write(b"+OK\n-ERR slow-consumer output over max_output\n")
            server = await self.serving(serve)
            with self.assertLogs("busgate", "WARNING") as cm:
                client = await CallbackClient.create(path=self.path, reconnect=False)
                await asyncio.wait_for(client.start(), TIMEOUT)
            text = "\n".join(cm.output)
            self.assertIn("slow-consumer output over max_output", text)
            self.assertIn("busgated closed the session", text)
            server.close()
        run(go())

    def test_create_while_busgated_is_down_is_refused(self):
        """No socket (busgated not running) is ConnectionRefusedError, as
        upstream's TCP connect to a distributor that is down: an upstream
        app's retry on it works unchanged. A socket nobody listens on too."""
        async def go():
            with self.assertRaises(ConnectionRefusedError):
                await CallbackClient.create(path=self.path)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.bind(self.path)    # bound, never listening
            try:
                with self.assertRaises(ConnectionRefusedError):
                    await CallbackClient.create(path=self.path)
            finally:
                sock.close()
        run(go())

    def test_failed_connect_closes_its_loop(self):
        """busgate.connect() to a socket nobody listens on raises, and
        leaves no event loop open behind it (a script that retries would
        otherwise leak one, with its selector's fd, per attempt)."""
        import gc
        import warnings
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with self.assertRaises(OSError):
                busgate.connect(self.path)
            gc.collect()
        self.assertEqual([str(w.message) for w in caught
                          if issubclass(w.category, ResourceWarning)], [])


class CallbackClientTest(GatewayCase):
    BUS_KW = {"feeds": {"secure": {"authorization_required": True}}}

    async def recorder(self):
        return Recorder(await CallbackClient.create(path=self.gw.socket_path))

    def test_pub_sub_binary_empty_and_odd_names(self):
        feed, topic = "my feed %\"é", uniq("tö pic\t")

        async def go():
            r = await self.recorder()
            got = []

            async def on_data(user, host, feed, topic, data_packets, is_image):
                got.append((user, host, feed, topic, data_packets, is_image))
            r.client.data_handlers.append(on_data)
            await r.client.add_subscription(feed, topic)
            packets = [DataPacket({1, 2}, b"\x00\n\xff\r\n"), DataPacket(None, b"")]
            await r.client.publish(feed, topic, True, packets)
            ev = await r.data(topic)
            self.assertEqual((ev.feed, ev.is_image, ev.unicast), (feed, True, False))
            self.assertEqual(ev.packets, packets)
            self.assertEqual(got[0][2:4], (feed, topic))
            self.assertEqual(got[0][4], packets)
            self.assertTrue(got[0][5])
            self.assertEqual(got[0][0], "gw")
            with self.assertRaises(BusgateError) as cm:
                await r.client.publish(feed, topic, False, [])
            self.assertEqual(cm.exception.code, "no-packets")
            # Counted, as upstream: a second add needs a second remove.
            await r.client.add_subscription(feed, topic)
            await r.client.remove_subscription(feed, topic)
            await r.client.remove_subscription(feed, topic)
            await r.client.remove_subscription(feed, topic)     # no error
            other = uniq("other")
            await r.client.add_subscription(feed, other)
            await r.client.publish(feed, topic, False, [DataPacket(None, b"gone")])
            await r.client.publish(feed, other, False, [DataPacket(None, b"here")])
            await r.data(other)
            self.assertFalse([e for e in r.events if isinstance(e, busgate.Data)])
            self.assertEqual(await r.client.ping("x"), "x")
            self.assertEqual((await r.client.stats())["bus_state"], "up")
            await r.client.stop()
        run(go())

    def test_line_over_max_line_is_not_sent(self):
        """busgated discards a line past max_line up to its newline and
        would read the payload as commands: refused before it is written."""
        feed = uniq("LF")

        async def go():
            r = await self.recorder()
            await r.client.add_subscription(feed, "V")
            evil = DataPacket(None, b"PUB %s V delta 4\nevil" % feed.encode())
            with self.assertRaises(BusgateError) as cm:
                await r.client.publish(feed, "t" * 70000, False, [evil])
            self.assertEqual(cm.exception.code, "line-too-long")
            self.assertIn("max_line, 65536 bytes; nothing was sent", str(cm.exception))
            with self.assertRaises(BusgateError) as cm:
                await r.client.publish(feed, "V", False,
                                       [DataPacket(set(range(-2**31, -2**31 + 6000)), b"x")])
            self.assertEqual(cm.exception.code, "line-too-long")
            await r.client.publish(feed, "V", False, [DataPacket(None, b"ok")])
            ev = await r.data("V")
            self.assertEqual(ev.packets, [DataPacket(None, b"ok")])
            self.assertEqual(await r.client.ping("x"), "x")
            self.assertFalse([e for e in r.events if isinstance(e, busgate.Data)])  # no "evil"
            await r.client.stop()
        run(go())

    def test_ping_token_and_stats_view_are_one_token(self):
        """A ping token or STATS view with a space or a newline would be
        sent as two tokens, or two commands whose second reply answers the
        next request: refused before it is written."""
        async def go():
            client = (await self.recorder()).client
            for bad in ("two words", "line\nPING x", "tab\t"):
                with self.assertRaises(ValueError):
                    await client.ping(bad)
                with self.assertRaises(ValueError):
                    await client.stats(bad)
            self.assertEqual(await client.ping("ok"), "ok")
            self.assertEqual(await client.ping(), "")
            await client.stop()
        run(go())

    def test_notification_and_send(self):
        feed, topic = uniq("NF"), "AAPL"

        async def go():
            a, b = await self.recorder(), await self.recorder()
            notes = []

            async def on_notification(client_id, user, host, feed, topic, is_add):
                notes.append((client_id, user, host, feed, topic, is_add))
            a.client.notification_handlers.append(on_notification)
            await a.client.add_notification(feed)
            await b.client.add_subscription(feed, topic)
            await a.wait(lambda e: isinstance(e, busgate.Notification) and e.is_add)
            cid = notes[0][0]
            self.assertIsInstance(cid, uuid.UUID)
            self.assertEqual(notes[0][1:], ("gw", notes[0][2], feed, topic, True))
            await a.client.send(cid, feed, topic, True, [DataPacket(None, b"img")])
            ev = await b.data(topic)
            self.assertTrue(ev.unicast)
            self.assertEqual(ev.packets[0].data, b"img")
            await b.client.remove_subscription(feed, topic)
            await a.wait(lambda e: isinstance(e, busgate.Notification) and not e.is_add)
            self.assertFalse(notes[-1][5])
            await a.client.remove_notification(feed)
            for c in (a, b):
                await c.client.stop()
        run(go())

    def test_authorization(self):
        topic = uniq("AUTH")

        async def go():
            a, b = await self.recorder(), await self.recorder()
            reqs = []

            async def on_authorization(client_id, host, user, feed, topic):
                reqs.append((client_id, host, user, feed, topic))
            a.client._authorization_handlers.append(on_authorization)
            self.assertIs(a.client.authorization_handlers, a.client._authorization_handlers)
            await a.client.add_authorizer("secure")
            await b.client.add_subscription("secure", topic)
            await a.wait(lambda e: isinstance(e, busgate.AuthRequest))
            cid, host, user, feed, topic_ = reqs[0]
            self.assertEqual((user, feed, topic_), ("gw", "secure", topic))
            await a.client.authorize(cid, "secure", topic, True, {1, 2})
            with self.assertRaises(BusgateError) as cm:
                await a.client.authorize(cid, "secure", topic, False)
            self.assertEqual(cm.exception.code, "already-answered")
            await a.client.publish("secure", topic, True,
                                   [DataPacket({1}, b"one"), DataPacket({3}, b"three")])
            ev = await b.data(topic)
            self.assertEqual(ev.packets, [DataPacket({1}, b"one")])
            await a.client.remove_authorizer("secure")
            for c in (a, b):
                await c.client.stop()
        run(go())

    def test_authorization_handlers_alone(self):
        # Upstream style: no add_authorizer; a handler in the list is enough
        # (issue 13). Removing the last handler gives the registration back.
        t1, t2, t3 = uniq("AH"), uniq("AH"), uniq("AH")

        async def go():
            a, b = await self.recorder(), await self.recorder()
            reqs = []

            async def on_authorization(client_id, host, user, feed, topic):
                reqs.append((client_id, feed, topic))
            a.client._authorization_handlers.append(on_authorization)
            await b.client.add_subscription("secure", t1)
            await a.wait(lambda e: isinstance(e, busgate.AuthRequest) and e.topic == t1)
            self.assertEqual(reqs[-1][1:], ("secure", t1))
            await a.client.authorize(reqs[-1][0], "secure", t1, False)
            a.client._authorization_handlers.remove(on_authorization)
            await a.client.ping()
            await b.client.add_subscription("secure", t2)
            await asyncio.sleep(0.3)
            self.assertFalse([e for e in a.events if isinstance(e, busgate.AuthRequest)
                              and e.topic == t2])
            # Appended again (extend counts too): registered again.
            a.client.authorization_handlers.extend([on_authorization])
            await b.client.add_subscription("secure", t3)
            await a.wait(lambda e: isinstance(e, busgate.AuthRequest) and e.topic == t3)
            self.assertFalse([e for e in a.events if isinstance(e, busgate.Error)])
            for c in (a, b):
                await c.client.stop()
        run(go())


class BlockingTest(GatewayCase):
    def test_next_event_timeout_zero(self):
        """next_event(timeout=0) does not wait, but returns an event that
        is there (it gave None whatever was queued)."""
        feed = uniq("POLL")
        with busgate.connect(self.gw.socket_path) as bus:
            bus.subscribe(feed, "T")
            self.barrier()
            for i in range(3):
                bus.publish(feed, "T", b"%d" % i)
            got = []
            deadline = time.monotonic() + TIMEOUT
            while len(got) < 3 and time.monotonic() < deadline:
                ev = bus.next_event(timeout=0)
                if ev is None:
                    bus.ping()          # reads what has come meanwhile
                elif isinstance(ev, busgate.Data):
                    got.append(ev.packets[0].data)
            self.assertEqual(got, [b"0", b"1", b"2"])
            self.assertIsNone(bus.next_event(timeout=0))

    def test_blocking_iterator(self):
        with busgate.connect(self.gw.socket_path) as bus:
            self.assertIn(bus.bus_state, ("up", "unconfirmed"))
            bus.subscribe("prices", "a b")
            bus.publish("prices", "a b", b"", image=True)
            bus.publish("prices", "a b", [DataPacket({1}, b"x"), DataPacket(None, b"\n")])
            got = []
            for ev in bus.events(timeout=TIMEOUT):
                if isinstance(ev, busgate.Data):
                    got.append(ev)
                if len(got) == 2:
                    break
            self.assertEqual([(e.is_image, e.packets) for e in got],
                             [(True, [DataPacket(None, b"")]),
                              (False, [DataPacket({1}, b"x"), DataPacket(None, b"\n")])])
            self.assertFalse([e for e in bus.events(timeout=0.2) if isinstance(e, busgate.Data)])
        with busgate.connect(self.gw.socket_path) as bus:
            bus.subscribe("prices", "c")
            bus.publish("prices", "c", "héllo", entitlements={7})
            ev = next(e for e in bus.events(timeout=TIMEOUT) if isinstance(e, busgate.Data))
            self.assertEqual(ev.packets, [DataPacket({7}, "héllo".encode())])
            bus.notify("prices")
            bus.unnotify("prices")
            bus.authorizer("secure")
            bus.unauthorizer("secure")
            bus.unsubscribe("prices", "c")
            self.assertFalse([e for e in bus.events(timeout=0.2) if isinstance(e, busgate.Data)])
            self.assertEqual(bus.ping(), "")


def run_example(path, env):
    return subprocess.Popen([sys.executable, path], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


class NameTest(GatewayCase):
    def test_set_name(self):
        with busgate.connect(self.gw.socket_path) as bus:
            with self.assertRaises(BusgateError) as cm:
                bus.set_name("x" * 65)
            self.assertEqual(cm.exception.code, "bad-name")
            bus.set_name("café")
            self.assertTrue(any(" app=café " in s and s.endswith(" self")
                                for s in bus.stats("SESSIONS")["session"]))
            # "unconfirmed" until the gateway's probe of the new link returns
            wait_until(lambda: bus.stats("LINK").get("state") == "up", what="link up")
            with self.assertRaises(BusgateError) as cm:
                bus.stats("NONSENSE")
            self.assertEqual(cm.exception.code, "syntax")


class ExamplesTest(GatewayCase):
    """Every example of the upstream client's README, with only the import
    and the create(...) line changed, through busgated."""
    BUS_KW = {"feeds": {"secure": {"authorization_required": True}}}

    def env(self):
        env = dict(os.environ, BUSGATE_SOCKET=self.gw.socket_path,
                   PYTHONPATH=PYDIR + os.pathsep + os.environ.get("PYTHONPATH", ""))
        return env

    def subscribed(self, watcher, n):
        return wait_until(lambda: int(watcher.stats()["subscriptions"]) >= n,
                          what="%d subscriptions" % n)

    def test_readme_example_subscriber(self):
        watcher = self.session()
        before = int(watcher.stats()["subscriptions"])
        m = self.bus.mark()
        proc = run_example(os.path.join(EXAMPLES, "upstream_example.py"), self.env())
        try:
            self.subscribed(watcher, before + 1)
            self.wait_recv("SubscriptionRequest",
                           lambda f: (f["feed"], f["topic"]) == ("TEST", "FOO"), since=m)
            pub = self.client("pub")
            pub.publish("TEST", "FOO", [(None, "hé".encode()), ([1], b"")], is_image=True)
            time.sleep(1)
        finally:
            proc.terminate()
            out, err = proc.communicate(timeout=TIMEOUT)
        self.assertIn('data: user="pub",host=', out, err)
        self.assertIn('feed="TEST",topic="FOO",is_image=True', out)
        self.assertIn("packet: entitlements=None,message=hé", out)
        self.assertIn("packet: entitlements={1},message=None", out)

    def test_connection_examples(self):
        # SSL, basic and token authentication: main() subscribes and runs.
        for name in ("upstream_ssl", "upstream_basic_auth", "upstream_token_auth"):
            watcher = self.session()
            before = len([s for s in watcher.stats()["session"] if "subs=1" in s])
            code = ("import asyncio, runpy; ns = runpy.run_path(%r); "
                    "asyncio.run(ns['main']())" % os.path.join(EXAMPLES, name + ".py"))
            proc = subprocess.Popen([sys.executable, "-c", code], env=self.env(),
                                    stderr=subprocess.PIPE, text=True)
            try:
                wait_until(lambda: len([s for s in watcher.stats()["session"]
                                        if "subs=1" in s]) == before + 1,
                           what="%s to subscribe" % name)
                self.assertIsNone(proc.poll())
            finally:
                proc.terminate()
                proc.communicate(timeout=TIMEOUT)

    def test_handler_examples(self):
        for name in ("upstream_data_handler", "upstream_notification_handler",
                     "upstream_authorization_handler"):
            out = subprocess.run([sys.executable, os.path.join(EXAMPLES, name + ".py")],
                                 env=self.env(), capture_output=True, text=True,
                                 timeout=TIMEOUT)
            self.assertEqual(out.returncode, 0, out.stderr)

    def test_upstream_authorizer_example(self):
        # The README's handler answering with authorize(), nothing else
        # (issue 13): the request reaches it and the answer the bus.
        topic = uniq("UA")
        m = self.bus.mark()
        proc = run_example(os.path.join(EXAMPLES, "upstream_authorizer.py"), self.env())
        try:
            sub = self.client("sub")
            sub.subscribe("secure", topic)
            rec = self.wait_recv("AuthorizationResponse",
                                 lambda f: (f["feed"], f["topic"]) == ("secure", topic),
                                 since=m)
            self.assertEqual((rec["fields"]["client_id"],
                              rec["fields"]["is_authorization_required"],
                              sorted(rec["fields"]["entitlements"])),
                             (self.gw_login("sub")["client_id"], True, [1, 2]))
        finally:
            proc.terminate()
            out, err = proc.communicate(timeout=TIMEOUT)
        self.assertIn('user="sub",feed="secure",topic="%s"' % topic, out, err)

    def test_busgate_readme_example(self):
        # README.md shows python/examples/readme.py; both must agree.
        with open(os.path.join(os.path.dirname(PYDIR), "README.md"), encoding="utf-8") as f:
            readme = f.read()
        with open(os.path.join(EXAMPLES, "readme.py"), encoding="utf-8") as f:
            example = f.read()
        self.assertIn("```python\n" + example + "```", readme)
        out = subprocess.run([sys.executable, os.path.join(EXAMPLES, "readme.py")],
                             env=self.env(), capture_output=True, text=True, timeout=TIMEOUT)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(out.stdout, "prices café au lait True b'\\x00binary\\n'\n")


class RestartTest(GatewayCase):
    """busgated restarts in the middle of a subscription; the bus goes
    down and up: the app keeps receiving and is told."""
    BUS_KW = {"heartbeat": 0.2, "feeds": {"secure": {"authorization_required": True}}}
    GW_CONFIG = {"bus": {"heartbeat": {"timeout": "10s"}}}

    def test_busgated_restart_keeps_subscription(self):
        feed, topic = uniq("RS"), "T é"

        async def go():
            r = Recorder(await CallbackClient.create(path=self.gw.socket_path,
                                                     backoff_max=0.5, app_name="pricer 1"))
            await r.client.add_subscription(feed, topic)
            await r.client.add_notification(feed)
            await r.client.add_authorizer("secure")
            h = Recorder(await CallbackClient.create(path=self.gw.socket_path,
                                                     backoff_max=0.5))

            async def on_authorization(client_id, host, user, feed, topic):
                pass
            h.client.authorization_handlers.append(on_authorization)
            await h.client.ping()
            pub = self.client("pub")
            deadline = time.monotonic() + TIMEOUT
            while time.monotonic() < deadline:       # until the bus has the SUB
                pub.publish(feed, topic, [(None, b"before")])
                await asyncio.sleep(0.1)
                if any(isinstance(e, busgate.Data) for e in r.events):
                    break
            self.assertEqual((await r.data(topic)).packets[0].data, b"before")
            await asyncio.get_event_loop().run_in_executor(None, self.gw.stop)
            await r.wait(lambda e: isinstance(e, busgate.Link) and e.state == "down")
            await asyncio.sleep(0.3)        # a reconnect attempt or two fail
            await asyncio.get_event_loop().run_in_executor(None, self.gw.start)
            self.gw.wait_bus_up()
            await r.wait(lambda e: isinstance(e, busgate.Link) and e.state == "up")
            # The handler-only client registered again for every feed.
            await h.wait(lambda e: isinstance(e, busgate.Link) and e.state == "up")
            sub_topic = uniq("RA")
            self.client("sub").subscribe("secure", sub_topic)
            await h.wait(lambda e: isinstance(e, busgate.AuthRequest) and e.topic == sub_topic,
                         "the request after the restart")
            await h.client.stop()
            sessions = (await r.client.stats())["session"]
            # The new session has the registrations and the app's name.
            self.assertTrue(any("subs=1" in s and "app=pricer%201 self" in s
                                for s in sessions), sessions)
            # The restored NOTIFY sees the restored subscription.
            await r.wait(lambda e: isinstance(e, busgate.Notification) and e.topic == topic)
            deadline = time.monotonic() + TIMEOUT
            while time.monotonic() < deadline:       # until the bus has the new SUB
                pub.publish(feed, topic, [(None, b"after")])
                await asyncio.sleep(0.1)
                if any(isinstance(e, busgate.Data) and e.packets[0].data == b"after"
                       for e in r.events):
                    break
            await r.wait(lambda e: isinstance(e, busgate.Data) and e.topic == topic
                         and e.packets[0].data == b"after", "DATA after the restart")
            await r.client.stop()
        run(go())

    def test_bus_state_events(self):
        async def go():
            r = Recorder(await CallbackClient.create(path=self.gw.socket_path))
            states = []

            async def on_bus(state, reason):
                states.append(state)
            r.client.bus_state_handlers.append(on_bus)
            await asyncio.get_event_loop().run_in_executor(None, self.bus.stop)
            await r.wait(lambda e: isinstance(e, busgate.BusState) and e.state == "down")
            self.assertEqual(r.client.bus_state, "down")
            await asyncio.get_event_loop().run_in_executor(None, self.bus.start)
            # (An "up" may come before the down: the link confirmed after we
            # connected; the one wanted is after it.)
            down = states.index("down")
            deadline = time.monotonic() + TIMEOUT
            while "up" not in states[down:] and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            self.assertIn("unconfirmed", states[down:])
            self.assertEqual(states[-1], "up")
            await r.client.stop()
        run(go())


class RevokeTest(GatewayCase):
    """A reload's access rules end a registration: the app is told
    (Revoked) and keeps its session; a reconnect does not restore it, and
    one the next busgated refuses to restore is reported the same way."""

    def write_rules(self, rules):
        self.gw.write_config()
        if rules:
            with open(self.gw.config_path, "a") as f:
                f.write('access:\n  - uid: %d\n    allow: all\n    feeds: ["kept"]\n'
                        % os.getuid())

    def reload(self, rules):
        start = self.gw.log_offset()
        self.write_rules(rules)
        self.gw.reload()
        self.gw.wait_log("reloaded", start=start)

    def test_revoked_and_not_restored(self):
        feed_a, feed_b = "rv a" + uniq(), "rv b" + uniq()

        async def go():
            loop = asyncio.get_event_loop()
            r = Recorder(await CallbackClient.create(path=self.gw.socket_path,
                                                     backoff_max=0.5))
            revoked = []

            async def on_revoked(verb, feed, topic, reason):
                revoked.append((verb, feed, topic))
            r.client.revoked_handlers.append(on_revoked)
            await r.client.add_subscription(feed_a, "t é")
            try:
                await loop.run_in_executor(None, self.reload, True)
                ev = await r.wait(lambda e: isinstance(e, busgate.Revoked))
                self.assertEqual(ev[:3], ("subscribe", feed_a, "t é"))
                self.assertIn("no access rule allows it", ev.reason)
                self.assertEqual(await r.client.ping(), "")    # the session stays
                self.assertFalse(any(isinstance(e, busgate.Link) for e in r.events))
                await loop.run_in_executor(None, self.reload, False)
                await r.client.add_subscription(feed_b, "t")
                await loop.run_in_executor(None, self.gw.stop)
                await loop.run_in_executor(None, self.write_rules, True)
                await loop.run_in_executor(None, self.gw.start)
                up = await r.wait(lambda e: isinstance(e, busgate.Link) and e.state == "up")
                self.assertEqual(up.reason, "restored 1 requests")    # not feed_a
                ev = await r.wait(lambda e: isinstance(e, busgate.Revoked))
                self.assertEqual(ev[:3], ("subscribe", feed_b, "t"))
                self.assertEqual(revoked, [("subscribe", feed_a, "t é"),
                                           ("subscribe", feed_b, "t")])
                # Not restored again: the client forgot it (removing it
                # is a no-op) and busgated has no subscription.
                self.assertEqual(r.client._subscriptions, {})
                await r.client.remove_subscription(feed_b, "t")
                self.assertTrue(any("subs=0" in s and s.endswith(" self")
                                    for s in (await r.client.stats())["session"]))
            finally:
                await loop.run_in_executor(None, self.reload, False)
                await r.client.stop()
        run(go())


class SlowConsumerTest(GatewayCase):
    GW_CONFIG = {"listen": {"max_output": 65536}}

    def test_slow_app_is_told(self):
        feed = uniq("SLOW")
        with busgate.connect(self.gw.socket_path, backoff_max=0.5) as bus:
            bus.subscribe(feed, "T")
            self.barrier()
            pub = self.client("pub")
            mark = self.gw.log_offset()
            # The script does not read while the burst comes: cut off.
            for i in range(3000):
                pub.publish(feed, "T", [(None, b"%06d" % i + b"." * 1000)])
            self.gw.wait_log(r"slow consumer", start=mark)
            told = []      # Data of the old session, the error, the link down, up
            for ev in bus.events(timeout=TIMEOUT):
                if isinstance(ev, (busgate.Error, busgate.Link)):
                    told.append(ev[:1])
                if isinstance(ev, busgate.Link) and ev.state == "up":
                    break
            self.assertEqual(told, [("slow-consumer",), ("down",), ("up",)])
            # Restored: data flows again (once the bus has the new SUB).
            ev = None
            deadline = time.monotonic() + TIMEOUT
            while time.monotonic() < deadline:
                pub.publish(feed, "T", [(None, b"again")])
                ev = bus.next_event(timeout=0.2)
                while ev is not None and not (isinstance(ev, busgate.Data)
                                              and ev.packets[0].data == b"again"):
                    ev = bus.next_event(timeout=0.2)
                if ev is not None:
                    break
            self.assertIsNotNone(ev, "no data after the reconnect")

    def test_slow_handler_reaches_error_handlers(self):
        feed = uniq("SLOWA")
        pub = self.client("pub")

        async def go():
            r = Recorder(await CallbackClient.create(path=self.gw.socket_path,
                                                     backoff_max=0.5))
            errors, links, bursts = [], [], []

            async def on_data(user, host, feed_, topic, data_packets, is_image):
                if not bursts:
                    # A handler that blocks the loop while a burst comes.
                    bursts.append(1)
                    # The log from here on: the class's other test logged one.
                    mark = self.gw.log_offset()
                    for i in range(3000):
                        pub.publish(feed, "T", [(None, b"." * 1000)])
                    self.gw.wait_log(r"slow consumer", start=mark)

            async def on_error(code, message):
                errors.append(code)

            async def on_link(state, reason):
                links.append(state)
            r.client.data_handlers.append(on_data)
            r.client.error_handlers.append(on_error)
            r.client.link_handlers.append(on_link)
            await r.client.add_subscription(feed, "T")
            self.barrier()
            pub.publish(feed, "T", [(None, b"first")])
            await r.wait(lambda e: isinstance(e, busgate.Link) and e.state == "up")
            self.assertEqual((errors, links), (["slow-consumer"], ["down", "up"]))
            await r.client.stop()
        run(go())


    def test_slow_async_handler_is_cut_off(self):
        """A handler that awaits (not one that blocks the loop) falls
        behind a burst: the client stops reading once max_queued events,
        or max_queued_bytes of them, wait, so busgated's max_output decides
        (slow-consumer) instead of the app's memory growing with every
        event the daemon sends."""
        pub = self.client("pub")
        read_limit = busgate.client.READ_LIMIT
        # The socket's own buffer in the client: small, as max_output is
        # here (the default, 16 MiB, would take a 32 MiB burst to fill).
        busgate.client.READ_LIMIT = 65536

        async def go(feed, **bounds):
            client = await CallbackClient.create(path=self.gw.socket_path, backoff_max=0.5,
                                                 **bounds)
            task = asyncio.ensure_future(client.start())
            errors, seen = [], []

            async def on_data(user, host, feed_, topic, data_packets, is_image):
                seen.append(1)
                await asyncio.sleep(0.01)

            async def on_error(code, message):
                errors.append(code)
            client.data_handlers.append(on_data)
            client.error_handlers.append(on_error)
            await client.add_subscription(feed, "T")
            self.barrier()
            mark = self.gw.log_offset()

            def burst():    # paced, so that the client's reader keeps up
                for i in range(3000):
                    pub.publish(feed, "T", [(None, b"." * 1000)])
                    if i % 50 == 49:
                        time.sleep(0.01)
            await asyncio.get_event_loop().run_in_executor(None, burst)
            deadline = time.monotonic() + TIMEOUT
            while not errors and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            self.assertEqual(errors[:1], ["slow-consumer"], "%d events handled" % len(seen))
            self.gw.wait_log(r"slow consumer", start=mark)
            self.assertLess(len(seen), 3000)
            await client.stop()
            task.cancel()
        try:
            run(go(uniq("SLOWQ"), max_queued=100))
            run(go(uniq("SLOWB"), max_queued_bytes=100 * 1000))
        finally:
            busgate.client.READ_LIMIT = read_limit


if __name__ == "__main__":
    unittest.main()
