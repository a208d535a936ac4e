#!/bin/sh
# rock_check.sh — the LuaRocks package from a fresh clone, into a private
# tree: lint, make, test, the installed module and program, remove.
# Run by `make rock-check` from the top of the tree.  It clones the
# committed HEAD, so uncommitted edits are not what it checks.
# Prints "rock-check: N passed, N failed"; exit status 1 on a failure.
set -u
LUAROCKS=${LUAROCKS:-luarocks-5.4}
ROCKSPEC=microml-scm-1.rockspec
src_repo=$(pwd)
want_version=$(sed -n 's/^#define MM_VERSION "\(.*\)"/\1/p' runtime/tensor.h)
d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT
pass=0 fail=0
ok() { echo "ok   $1"; pass=$((pass + 1)); }
ko() { echo "FAIL $1"; [ -f "$2" ] && tail -n 30 "$2"; fail=$((fail + 1)); }
tree="$d/tree"
lr() { "$LUAROCKS" --tree "$tree" "$@"; }

if ! command -v "$LUAROCKS" >/dev/null; then
  echo "FAIL $LUAROCKS not found (apt-get install luarocks; make deps does)"
  echo "rock-check: 0 passed, 1 failed"; exit 1
fi
git clone -q "$src_repo" "$d/src" && ok "fresh clone of $(git rev-parse --short HEAD)" || ko "git clone"
cd "$d/src" || exit 1

lr lint "$ROCKSPEC" > "$d/lint.log" 2>&1 && [ ! -s "$d/lint.log" ] \
  && ok "$LUAROCKS lint (no output)" || ko "$LUAROCKS lint" "$d/lint.log"

lr make "$ROCKSPEC" > "$d/make.log" 2>&1 && ok "$LUAROCKS make into a private tree" \
  || ko "$LUAROCKS make" "$d/make.log"
# The reason for the make backend: the kernels keep their per-ISA flags.
grep -q -- '-mavx512f .*-c runtime/gemm_avx512.c' "$d/make.log" \
  && grep -q -- '-mavx2 .*-c runtime/gemm_avx2.c' "$d/make.log" \
  && ok "kernels built with -mavx2 / -mavx512f" || ko "per-ISA kernel flags" "$d/make.log"
grep -qi 'warning' "$d/make.log" && ko "warnings during $LUAROCKS make" "$d/make.log" \
  || ok "no warnings during $LUAROCKS make"
lr list --porcelain 2>/dev/null | grep -q "^microml	scm-1	installed" \
  && ok "$LUAROCKS list shows microml scm-1" || ko "microml not listed"

# The busted counts of this run are not printed: .ci/run already counts
# the same suite from `make test`.
lr test "$ROCKSPEC" > "$d/test.log" 2>&1 \
  && grep -q ' 0 failures / 0 errors' "$d/test.log" \
  && ok "$LUAROCKS test ($(grep -o '[0-9]* successes' "$d/test.log" | paste -sd+ -))" \
  || ko "$LUAROCKS test" "$d/test.log"

# The installed rock, away from the source tree: only the tree's paths.
cd "$d" || exit 1
eval "$(lr path)"
out=$(lua5.4 -e 'local mm = require "microml"
  local core = package.searchpath("microml.core", package.cpath)
  local y = mm.nn.Linear(3, 2)(mm.ones(4, 3))
  print(mm.version, core, table.concat(y:shape(), "x"))' 2>&1)
case "$out" in
  "$want_version	$tree/lib/lua/5.4/microml/core.so	4x2") ok "lua5.4 requires the installed rock";;
  *) echo "$out"; ko "require microml from the tree";;
esac
"$tree/bin/microml" --version 2>&1 | grep -qF "MicroML $want_version " \
  && ok "installed microml --version says $want_version" || ko "installed microml --version"
echo 'print(require("microml").version)' | "$tree/bin/microml" - | grep -qxF "$want_version" \
  && ok "installed microml runs a script" || ko "installed microml runs a script"

lr remove microml > "$d/remove.log" 2>&1 && [ ! -e "$tree/bin/microml" ] \
  && ok "$LUAROCKS remove microml" || ko "$LUAROCKS remove" "$d/remove.log"

echo "rock-check: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
