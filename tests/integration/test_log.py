#!/usr/bin/env python3
"""The daemon's log as journald reads it, through the real daemon.

Names from local clients and from the bus end up in log lines; log.c
escapes every line, so none of them can start a line of its own with a
forged "<N>" priority prefix.
"""

import os
import re
import shutil
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from gwtest import Gateway, TestBus, tempdir  # noqa: E402

# A priority prefix at the start of a line, as journald parses stderr.
PRIO_LINE = re.compile(r"^<(\d)>", re.M)


class LogCase(unittest.TestCase):
    """One test bus with a feed that needs authorization; a gateway per test."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempdir()
        cls.bus = TestBus(cls.tmp, feeds={"secure": {"authorization_required": True}})
        cls.bus.start()

    @classmethod
    def tearDownClass(cls):
        cls.bus.stop()
        if not os.environ.get("BUSGATE_TEST_KEEP"):
            shutil.rmtree(cls.tmp, ignore_errors=True)

    def gateway(self, name, level="info"):
        gw = Gateway(self.tmp, self.bus, name=name, config={"log": {"level": level}})
        gw.start()
        self.addCleanup(gw.stop)
        gw.wait_bus_up()
        return gw

    def session(self, gw):
        s = gw.session()
        self.addCleanup(s.close)
        return s


class Injection(LogCase):

    def test_forged_priority_line_escaped(self):
        """A topic with a newline and "<0>" (the red team's SUB): the bus
        asks the gateway, which has no local authorizer, and the notice
        saying so quotes the topic escaped, on its own line."""
        gw = self.gateway("inject")
        s = self.session(gw)
        start = gw.log_offset()
        self.assertEqual(s.cmd("SUB secure x%0A<0>busgated:%20FORGED"), "+OK")
        gw.wait_log(r"no local authorizer", start=start)
        log = gw.log()[start:]
        self.assertEqual([m.group(1) for m in PRIO_LINE.finditer(log)
                          if m.group(1) in "0123"], [], log)
        self.assertIn("for secure / x%0A<0>busgated: FORGED: no local authorizer", log)
        for line in log.splitlines():
            self.assertRegex(line, r"^<[4-7]>", "a line without its own prefix")


if __name__ == "__main__":
    unittest.main(verbosity=2)
