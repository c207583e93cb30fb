#!/bin/sh
# The paths chosen at configure time reach the programs, and re-running
# ./configure with other paths and make rebuilds what uses them (README:
# a first ./configure with the default prefix, then the "Install as a
# service" ./configure --prefix=/usr ... and make).
#
# A pristine copy of the sources (make distdir) is configured in place with
# a temporary prefix and built, then reconfigured as the README says and
# rebuilt; the compiled-in socket and config paths must follow.
#
# Environment: top_builddir (set by make check).

set -u

name=paths
. "$(dirname "$0")/common.sh"

# step NAME COMMAND...: run it quietly, its output shown if it fails.
step() {
    name=$1
    shift
    "$@" >"$tmp/$name.log" 2>&1 || { tail -20 "$tmp/$name.log"; fail "$name failed"; }
}

# expect PROGRAM TEXT: PROGRAM --help names TEXT.
expect() {
    "$tree/src/$1" --help >"$tmp/help" 2>&1
    grep -qF -- "$2" "$tmp/help" || { cat "$tmp/help"; fail "$1 --help does not name $2"; }
}

tree=$tmp/busgate
step distdir $make -C "$builddir" distdir distdir="$tree"
cd "$tree" || exit 1

step configure-1 ./configure --prefix="$tmp/first"
step make-1 $make
expect busgate "$tmp/first/var/run/busgate/busgate.sock"
expect busgated "$tmp/first/etc/busgate/busgated.yaml"

step configure-2 ./configure --prefix=/usr --sysconfdir=/etc --localstatedir=/var --runstatedir=/run
step make-2 $make
expect busgate " /run/busgate/busgate.sock"
expect busgated " /etc/busgate/busgated.yaml"

# The same paths again rebuild nothing.
step configure-3 ./configure --prefix=/usr --sysconfdir=/etc --localstatedir=/var --runstatedir=/run
step make-3 $make
if grep -q ' CC ' "$tmp/make-3.log"; then
    cat "$tmp/make-3.log"
    fail "a reconfigure with the same paths recompiled"
fi
echo "PASS: the configure-time paths follow a reconfigure"
