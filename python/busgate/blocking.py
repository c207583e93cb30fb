"""A blocking API for scripts, over the asyncio client (so it shares its
reconnect and restore): events are read while the script is inside a
call, and the daemon holds them (up to max_output) in between.

    with busgate.connect() as bus:
        bus.subscribe("prices", "AAPL")
        for event in bus.events(timeout=5):
            print(event)
"""

import asyncio
from typing import Iterator, List, Optional, Set, Union

from . import protocol as p
from .client import CallbackClient
from .protocol import DataPacket

Payload = Union[bytes, str, List[DataPacket], None]


def _packets(data: Payload, entitlements: Optional[Set[int]]) -> List[DataPacket]:
    if isinstance(data, list):
        return data
    if isinstance(data, str):
        data = data.encode("utf-8")
    return [DataPacket(entitlements, data)]


class Client:
    """A session with busgated used from ordinary (non-async) code."""

    def __init__(self, path: Optional[str] = None, **kwargs) -> None:
        self._loop = asyncio.new_event_loop()
        try:
            self._client: CallbackClient = self._run(self._open(path, kwargs))
        except BaseException:
            self._loop.close()      # no Client to close() it later
            raise

    async def _open(self, path, kwargs) -> CallbackClient:
        # Events are taken from the client's queue by next_event (its
        # handlers are not run): past max_queued, reading waits for them.
        return await CallbackClient.create(path, **kwargs)

    def _run(self, coro):
        return self._loop.run_until_complete(coro)

    @property
    def hello(self) -> p.Hello:
        return self._client.hello

    @property
    def bus_state(self) -> str:
        return self._client.bus_state

    def subscribe(self, feed: str, topic: str) -> None:
        self._run(self._client.add_subscription(feed, topic))

    def unsubscribe(self, feed: str, topic: str) -> None:
        self._run(self._client.remove_subscription(feed, topic))

    def notify(self, feed: str) -> None:
        self._run(self._client.add_notification(feed))

    def unnotify(self, feed: str) -> None:
        self._run(self._client.remove_notification(feed))

    def authorizer(self, feed: str) -> None:
        self._run(self._client.add_authorizer(feed))

    def unauthorizer(self, feed: str) -> None:
        self._run(self._client.remove_authorizer(feed))

    def publish(self, feed: str, topic: str, data: Payload, image: bool = False,
                entitlements: Optional[Set[int]] = None,
                content_type: Optional[str] = None) -> None:
        """data: bytes or str (one packet), or a list of DataPacket;
        content_type: bus protocol 6 only."""
        self._run(self._client.publish(feed, topic, image, _packets(data, entitlements),
                                       content_type))

    def send(self, client_id, feed: str, topic: str, data: Payload, image: bool = False,
             entitlements: Optional[Set[int]] = None,
             content_type: Optional[str] = None) -> None:
        self._run(self._client.send(client_id, feed, topic, image,
                                    _packets(data, entitlements), content_type))

    def authorize(self, client_id, feed: str, topic: str, required: bool,
                  entitlements: Optional[Set[int]] = None) -> None:
        self._run(self._client.authorize(client_id, feed, topic, required, entitlements))

    def set_name(self, name: str) -> None:
        """Label the session for STATS and busgated's log (NAME)."""
        self._run(self._client.set_name(name))

    def ping(self, token: str = "") -> str:
        return self._run(self._client.ping(token))

    def stats(self, view: Optional[str] = None) -> dict:
        return self._run(self._client.stats(view))

    def next_event(self, timeout: Optional[float] = None):
        """The next event (protocol.Data, Notification, AuthRequest,
        BusState, Link, Error, Revoked), or None after timeout seconds
        (0: an event already received, else None at once), or None once
        the session has ended for good (reconnect=False) and its events
        have been taken."""
        client = self._client
        try:
            # wait_for(..., 0) would cancel the wait before it looked.
            return client._next_event_nowait()
        except asyncio.QueueEmpty:
            pass
        if timeout is not None and timeout <= 0:
            self._run(asyncio.sleep(0))     # read what has come, not waiting
            try:
                return client._next_event_nowait()
            except asyncio.QueueEmpty:
                return None
        try:
            return self._run(asyncio.wait_for(client._next_event(), timeout))
        except asyncio.TimeoutError:
            return None

    def events(self, timeout: Optional[float] = None) -> Iterator:
        """Events as they come; ends when none came for timeout seconds
        (None: never), or when the session has ended and will not be
        reconnected (reconnect=False)."""
        while True:
            ev = self.next_event(timeout)
            if ev is None:
                return
            yield ev

    def close(self) -> None:
        if not self._loop.is_closed():
            self._run(self._stop())
            self._run(asyncio.sleep(0))      # let the transport close
            self._loop.close()

    async def _stop(self) -> None:
        await self._client.stop()      # stop() wants its loop running

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def connect(path: Optional[str] = None, **kwargs) -> Client:
    """A blocking session with busgated at path (default $BUSGATE_SOCKET or
    the daemon's compiled-in socket). kwargs as for CallbackClient."""
    return Client(path, **kwargs)
