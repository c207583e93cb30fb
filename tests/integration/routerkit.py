"""Shared pieces of the router/session integration tests: a test case with
its own test bus (TLS + password auth) and busgated, raw bus clients, and
ways to wait on what the bus saw.

The bus logs every message it receives in order, per connection, so a
"barrier" (a subscribe on a fresh topic, waited for in the bus log) proves
that every message the gateway sent before it has reached the bus.
"""

import itertools
import os
import shutil
import sys
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import gwtest  # noqa: E402
from gwtest import (Gateway, TestBus, escape, tempdir, TIMEOUT,  # noqa: E402,F401
                    BUSGATED_IS_SANITIZED, wait_until)

USERS = {"gw": "gwpass", "gw2": "gw2pass", "pub": "pubpass", "sub": "subpass",
         "sub2": "sub2pass"}

_seq = itertools.count(1)



def uniq(prefix="t"):
    """A name no other test uses."""
    return "%s%d" % (prefix, next(_seq))


def stats(s):
    """STATS as {name: value}; other events stay queued on the session."""
    return s.stats()

class GatewayCase(unittest.TestCase):
    """One test bus and one busgated for the whole class."""

    BUS_KW = {}          # extra TestBus arguments (defects, feeds, ...)
    GW_CONFIG = {}       # busgated config overrides
    GW_USER = "gw"

    @classmethod
    def setUpClass(cls):
        # Cleanups, not tearDownClass: they also run when setUpClass fails
        # part way (busgated not built, a bad config), so that the test bus
        # is not left running.
        cls.dir = tempdir()
        cls.addClassCleanup(cls._remove_dir)
        cls.bus = TestBus(cls.dir, users=USERS, **cls.BUS_KW)
        cls.addClassCleanup(cls.bus.stop)
        cls.bus.start()
        cls.gws = []
        cls.addClassCleanup(cls._stop_gateways)
        cls.gw = cls.start_gateway(cls.GW_USER, cls.GW_CONFIG)

    @classmethod
    def start_gateway(cls, user, config=None, name=None):
        gw = Gateway(cls.dir, cls.bus, username=user, password=USERS[user],
                     config=config or {}, name=name or user)
        cls.gws.append(gw)
        gw.start()
        gw.wait_bus_up()
        return gw

    @classmethod
    def _stop_gateways(cls):
        for gw in cls.gws:
            gw.stop()

    @classmethod
    def _remove_dir(cls):
        if not os.environ.get("BUSGATE_TEST_KEEP"):
            shutil.rmtree(cls.dir, ignore_errors=True)

    def setUp(self):
        self.closers = []

    def tearDown(self):
        for c in reversed(self.closers):
            try:
                c.close()
            except Exception:
                pass

    # ---------------------------------------------------------- clients

    def session(self, gw=None, **kw):
        s = (gw or self.gw).session(**kw)
        self.closers.append(s)
        return s

    def client(self, user="pub"):
        c = self.bus.client(user=user)
        self.closers.append(c)
        return c

    # ------------------------------------------------------- bus record

    def recv_from(self, user="gw", type=None, since=0, pred=None):
        """Messages the bus received from connections of user."""
        return [r for r in self.bus.messages(type=type, direction="recv", since=since)
                if r.get("user") == user and (pred is None or pred(r["fields"]))]

    def wait_recv(self, type, pred=None, user="gw", since=0):
        """Wait until the bus has received a type message from user."""
        return self.bus.wait_for(
            lambda r: r["event"] == "recv" and r.get("type") == type
            and r.get("user") == user and (pred is None or pred(r["fields"])),
            timeout=TIMEOUT, since=since)

    def barrier(self, gw=None, user="gw"):
        """Return once the bus has read everything gw sent so far."""
        s = (gw or self.gw).session()
        topic = uniq("barrier")
        self.assertEqual(s.cmd("SUB __barrier__ %s" % topic), "+OK")
        self.wait_recv("SubscriptionRequest",
                       lambda f: f["feed"] == "__barrier__" and f["topic"] == topic,
                       user=user)
        s.close()

    def subs_seen(self, feed, topic, add, user="gw", since=0):
        return self.recv_from(user, "SubscriptionRequest", since,
                              lambda f: f["feed"] == feed and f["topic"] == topic
                              and f["is_add"] == add)

    def gw_login(self, user="gw"):
        """The latest login record of user: its client_id is the Guid."""
        logins = [r for r in self.bus.events("login") if r.get("user") == user]
        self.assertTrue(logins, "no login of %s" % user)
        return logins[-1]
