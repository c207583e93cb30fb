#!/bin/sh
# The Python package installs with pip from its pyproject.toml, the second
# way README gives (issue 13): `pip install ./python`.
#
# Offline, as here and in CI: --no-build-isolation --no-index use Debian's
# setuptools and wheel (python3-setuptools, python3-wheel) instead of
# fetching them. Debian's interpreter is used because another python3 on
# PATH may lack pip. The source is copied first: setuptools writes its
# build files beside pyproject.toml, and distcheck's source is read-only.
#
# Environment: top_srcdir (set by make check).

set -u

srcdir=${top_srcdir:-.}
py=/usr/bin/python3
tmp=$(mktemp -d "${TMPDIR:-/tmp}/busgate-pip.XXXXXX") || exit 1
trap 'rm -rf "$tmp"' EXIT INT TERM

fail() {
    echo "FAIL: $*"
    exit 1
}

cp -R "$srcdir/python" "$tmp/src" && chmod -R u+w "$tmp/src" || fail "copying python/"
(cd "$tmp" && "$py" -m pip install --no-build-isolation --no-index --target "$tmp/site" \
    "$tmp/src") >"$tmp/pip.log" 2>&1 || { tail -20 "$tmp/pip.log"; fail "pip install ./python failed"; }

for f in "$srcdir"/python/busgate/*.py; do
    [ -f "$tmp/site/busgate/$(basename "$f")" ] || fail "pip did not install busgate/$(basename "$f")"
done
(cd "$tmp" && PYTHONPATH="$tmp/site" "$py" -c '
import busgate, sys
assert busgate.__file__.startswith(sys.argv[1]), busgate.__file__
from busgate import CallbackClient, DataPacket
' "$tmp/site") || fail "the pip-installed package does not import"
echo "PASS: pip install ./python installs an importable busgate package"
