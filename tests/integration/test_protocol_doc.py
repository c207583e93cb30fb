"""Replay every example of doc/PROTOCOL.md against the real busgated.

Each ```session block runs against a fresh test bus and a fresh gateway, as
the document's "About the examples" section promises; the block format is
defined there. The document's Python client is run as well, and the error
codes and verbs of src/lineproto.c are checked to be documented.
"""

import os
import re
import select
import shutil
import socket
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gwtest  # noqa: E402

DOC = os.path.join(gwtest.TOP_SRCDIR, "doc", "PROTOCOL.md")
LINEPROTO_C = os.path.join(gwtest.TOP_SRCDIR, "src", "lineproto.c")

# Markers, longest first so that "<~" is not read as "<".
LINE_RX = re.compile(r"^(?:([a-z]+)(?=[<>]))?(<~|<\*|<\.|<|>)(?: (.*))?$")
VAR_RX = re.compile(r"\$\{([A-Za-z_]\w*)\}")


def doc_text():
    with open(DOC, encoding="utf-8") as f:
        return f.read()


def fenced_blocks(text, info):
    """[(first line number, [(line number, text)], {setting: value})] of
    ```info blocks; "```info key=value..." sets gateway settings."""
    blocks, cur, start, settings = [], None, 0, {}
    for n, line in enumerate(text.split("\n"), 1):
        words = line.strip().split()
        if cur is None:
            if words and words[0] == "```" + info:
                cur, start = [], n
                settings = dict(w.split("=", 1) for w in words[1:])
        elif line.strip() == "```":
            blocks.append((start, cur, settings))
            cur = None
        else:
            cur.append((n, line))
    return blocks


def settings_config(settings):
    """{"bus.protocol": "6"} -> {"bus": {"protocol": "6"}}."""
    cfg = {}
    for key, value in settings.items():
        node = cfg
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return cfg


class Step:
    """One line of a session block."""

    def __init__(self, lineno, text):
        self.lineno = lineno
        self.text = text
        if text.startswith("! "):
            self.client, self.op, self.arg = None, "!", text[2:].strip()
            return
        m = LINE_RX.match(text)
        if m is None:
            raise ValueError("doc/PROTOCOL.md:%d: not a session line: %r" % (lineno, text))
        self.client = m.group(1) or "a"
        self.op = m.group(2)
        self.arg = m.group(3) or ""

    def __repr__(self):
        return "doc/PROTOCOL.md:%d: %s" % (self.lineno, self.text)


class Client:
    """One local connection, reading lines."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.buf = b""
        self.pending = b""
        self.peeked = []
        self.eof = False

    def queue(self, line):
        self.pending += line.encode("utf-8") + b"\n"

    def flush(self):
        if self.pending:
            self.sock.sendall(self.pending)
            self.pending = b""

    def read_line(self):
        """The next line (str), or None at end of file."""
        if self.peeked:
            return self.peeked.pop(0)
        deadline = time.monotonic() + gwtest.TIMEOUT
        while b"\n" not in self.buf:
            if self.eof:
                return None
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.sock], [], [], left)[0]:
                raise TimeoutError("no line from busgated within %ss" % gwtest.TIMEOUT)
            chunk = self.sock.recv(65536)
            if not chunk:
                self.eof = True
                if not self.buf:
                    return None
                self.buf += b"\n"
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        if line.endswith(b"\r"):
            line = line[:-1]
        return line.decode("utf-8", errors="surrogateescape")

    def close(self):
        self.sock.close()


class Replay:
    """Runs one block against a gateway."""

    def __init__(self, test, gw, bus, steps):
        self.test = test
        self.gw = gw
        self.bus = bus
        self.steps = steps
        self.clients = {}
        self.vars = {}

    def subst(self, text, regex):
        def value(m):
            if m.group(1) not in self.vars:
                raise KeyError("%s: ${%s} was never captured" % (self.step, m.group(1)))
            v = self.vars[m.group(1)]
            return re.escape(v) if regex else v
        return VAR_RX.sub(value, text)

    def client(self, name, index):
        c = self.clients.get(name)
        if c is not None:
            return c
        c = self.clients[name] = Client(self.gw.socket_path)
        first = next(s for s in self.steps[index:] if s.client == name)
        if not (first.op in ("<", "<~") and first.arg.startswith("HELLO")):
            hello = c.read_line()
            self.check(hello is not None and hello.startswith("HELLO busgate "),
                       "greeting", hello)
        return c

    def check(self, ok, want, got):
        if not ok:
            self.test.fail("%s\n  expected: %s\n  got:      %r\n--- busgated log (tail) ---\n%s"
                           % (self.step, want, got, self.gw.log()[-3000:]))

    def expect(self, c, step):
        line = c.read_line()
        if step.op == "<":
            want = self.subst(step.arg, False)
            self.check(line == want, repr(want), line)
        elif step.op == "<~":
            rx = self.subst(step.arg, True)
            m = re.fullmatch(rx, line) if line is not None else None
            self.check(m is not None, "/%s/" % rx, line)
            self.vars.update(m.groupdict())
        elif step.op == "<.":
            self.check(line is None, "the end of the session", line)

    def matches(self, step, line):
        if step.op == "<":
            return line == self.subst(step.arg, False)
        if step.op == "<~":
            return re.fullmatch(self.subst(step.arg, True), line) is not None
        return False

    def skip_many(self, c, index):
        """<* REGEX: skip matching lines up to one the next expectation takes."""
        step = self.steps[index]
        nxt = next((s for s in self.steps[index + 1:] if s.client == step.client), None)
        self.test.assertTrue(nxt is not None and nxt.op in ("<", "<~"),
                             "%s: '<*' must be followed by '<' or '<~'" % step)
        rx = self.subst(step.arg, True)
        while True:
            line = c.read_line()
            self.check(line is not None, "/%s/ or the next expectation" % rx, line)
            if self.matches(nxt, line):
                c.peeked.insert(0, line)
                return
            self.check(re.fullmatch(rx, line) is not None,
                       "/%s/ or %s" % (rx, nxt.text), line)

    def action(self, step):
        if step.arg == "bus stop":
            self.bus.stop()
        elif step.arg == "bus start":
            self.bus.start()
        else:
            self.test.fail("%s: unknown action" % step)

    def run(self):
        try:
            for i, step in enumerate(self.steps):
                self.step = step
                if step.op != ">":
                    for c in self.clients.values():
                        c.flush()
                if step.op == "!":
                    self.action(step)
                    continue
                c = self.client(step.client, i)
                if step.op == ">":
                    for other in self.clients.values():
                        if other is not c:
                            other.flush()
                    c.queue(self.subst(step.arg, False))
                elif step.op == "<*":
                    self.skip_many(c, i)
                else:
                    self.expect(c, step)
            for c in self.clients.values():
                c.flush()
        finally:
            for c in self.clients.values():
                c.close()


class Env:
    """The shared PKI directory; each block gets its own bus and gateway."""

    dir = None


def setUpModule():
    Env.dir = gwtest.tempdir("busgate-doc-")


def tearDownModule():
    if not os.environ.get("BUSGATE_TEST_KEEP"):
        shutil.rmtree(Env.dir, ignore_errors=True)


def run_block(test, index, steps, settings):
    bus = gwtest.TestBus(Env.dir, heartbeat=0.2, name="bus%d" % index,
                         feeds={"secure": {"authorization_required": True}},
                         protocol=int(settings.get("bus.protocol", 3)))
    bus.start()
    config = gwtest.merge({"bus": {"heartbeat": {"timeout": "10s"}}},
                          settings_config(settings))
    gw = gwtest.Gateway(Env.dir, bus, name="gw%d" % index, config=config)
    try:
        gw.start()
        gw.wait_log(r"bus: up")
        Replay(test, gw, bus, steps).run()
    finally:
        try:
            gw.stop()
        finally:
            bus.stop()


class TestProtocolDocExamples(unittest.TestCase):
    """One test per ```session block (added below)."""


def _add_block_tests():
    blocks = fenced_blocks(doc_text(), "session")
    for i, (start, lines, settings) in enumerate(blocks):
        steps = [Step(n, t) for n, t in lines]

        def test(self, i=i, steps=steps, settings=settings):
            run_block(self, i, steps, settings)
        test.__doc__ = "doc/PROTOCOL.md:%d" % start
        setattr(TestProtocolDocExamples, "test_line_%04d" % start, test)
    return len(blocks)


N_BLOCKS = _add_block_tests()


class TestProtocolDoc(unittest.TestCase):

    def test_has_examples(self):
        self.assertGreaterEqual(N_BLOCKS, 20)

    def test_every_error_code_and_verb_is_documented(self):
        with open(LINEPROTO_C, encoding="utf-8") as f:
            src = f.read()
        codes = re.findall(r'\[LP_ERR_(?!NONE)\w+\] = "([a-z-]+)"', src)
        verbs = re.findall(r'VERB\("([A-Z]+)"', src)
        self.assertGreaterEqual(len(codes), 20)
        self.assertEqual(len(verbs), 14)
        text = doc_text()
        for code in codes:
            self.assertIn("| `%s`" % code, text.replace(" / `", " | `"),
                          "error code %s missing from the error table" % code)
        for verb in verbs:
            self.assertIn("`%s" % verb, text, "command %s undocumented" % verb)

    def test_python_client(self):
        """The document's Python client works as printed."""
        blocks = fenced_blocks(doc_text(), "python")
        self.assertEqual(len(blocks), 1)
        code = "\n".join(t for _, t in blocks[0][1]) + "\n"
        self.assertLessEqual(len(code.strip().split("\n")), 40)
        bus = gwtest.TestBus(Env.dir, heartbeat=0.2, name="bus-py")
        bus.start()
        gw = gwtest.Gateway(Env.dir, bus, name="gw-py",
                            config={"bus": {"heartbeat": {"timeout": "10s"}}})
        script = os.path.join(Env.dir, "busgate_demo.py")
        with open(script, "w") as f:
            f.write(code)
        proc = None
        try:
            gw.start()
            gw.wait_log(r"bus: up")
            env = dict(os.environ, PYTHONUNBUFFERED="1")
            proc = subprocess.Popen([sys.executable, script, gw.socket_path,
                                     "my feed", "café"], stdout=subprocess.PIPE, env=env)
            out = b""
            deadline = time.monotonic() + gwtest.TIMEOUT
            while b"\nDATA" not in out or not out.endswith(b"\n"):
                left = deadline - time.monotonic()
                self.assertGreater(left, 0, "no DATA from the script: %r" % out)
                if select.select([proc.stdout], [], [], left)[0]:
                    chunk = os.read(proc.stdout.fileno(), 4096)
                    self.assertTrue(chunk, "the script ended: %r" % out)
                    out += chunk
            lines = out.decode("utf-8").split("\n")
            self.assertRegex(lines[0], r"^HELLO busgate \S+ proto=1 ")
            self.assertEqual(lines[1:3], ["+OK", "+OK"])
            self.assertRegex(lines[3], r"^DATA my feed/café from gw@\S+ "
                             r"\(image, multicast\): \[b'hello from python'\]$")
        finally:
            if proc is not None:
                proc.kill()
                proc.wait()
                proc.stdout.close()
            try:
                gw.stop()
            finally:
                bus.stop()


if __name__ == "__main__":
    unittest.main(verbosity=2)
