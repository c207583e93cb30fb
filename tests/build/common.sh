# Sourced by the tests/build/*.sh tests (after setting `name`): the build
# and source trees, a scratch directory removed at exit ($tmp), fail(), and
# $make for our own makes, which are not part of the jobserver of the make
# running the tests.
#
# Environment: top_builddir, top_srcdir (set by make check).

builddir=${top_builddir:-.}
srcdir=${top_srcdir:-.}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/busgate-$name.XXXXXX") || exit 1
trap 'chmod -R u+w "$tmp" 2>/dev/null; rm -rf "$tmp"' EXIT INT TERM
unset MAKEFLAGS MFLAGS MAKELEVEL
make=${MAKE:-make}

fail() {
    echo "FAIL: $*"
    exit 1
}
