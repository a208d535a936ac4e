#!/bin/sh
# check_includes.sh — the include graph of the C sources.
#
#   1. The headers under runtime/ and bindings/ must not include each other
#      in a cycle: each `#include "x.h"` of a header is an edge to the file
#      it names (same directory first, then runtime/, the -I path), and
#      tsort(1) must find an order.
#   2. The bindings see the runtime only through its public header: a
#      `#include "..."` in bindings/*.c or bindings/*.h names either a file
#      of bindings/ or "microml.h".
#
# Run from the top of the tree.  Exit status 1 on a violation.
set -eu
export LC_ALL=C
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0

resolve() {   # dir name -> path
  if [ -f "$1/$2" ]; then echo "$1/$2"; elif [ -f "runtime/$2" ]; then echo "runtime/$2"; else echo "?/$2"; fi
}

for h in runtime/*.h bindings/*.h; do
  echo "$h $h"
  d=$(dirname "$h")
  sed -n 's/^[[:space:]]*#[[:space:]]*include[[:space:]]*"\([^"]*\)".*/\1/p' "$h" |
    while read -r inc; do echo "$h $(resolve "$d" "$inc")"; done
done > "$tmp/edges"
if ! tsort "$tmp/edges" > /dev/null 2> "$tmp/err"; then
  echo "check_includes: headers include each other in a cycle:" >&2
  grep -v 'input contains a loop' "$tmp/err" | sed 's/^tsort: /  /' >&2
  fail=1
fi
hdrs=$(ls runtime/*.h bindings/*.h | wc -l)

bad=$(for f in bindings/*.c bindings/*.h; do
  sed -n 's/^[[:space:]]*#[[:space:]]*include[[:space:]]*"\([^"]*\)".*/\1/p' "$f" |
    while read -r inc; do
      [ -f "bindings/$inc" ] || [ "$inc" = microml.h ] || echo "  $f includes \"$inc\""
    done
done)
if [ -n "$bad" ]; then
  echo "check_includes: bindings must include no runtime header but microml.h:" >&2
  echo "$bad" >&2
  fail=1
fi
[ $fail -eq 0 ] && echo "check_includes: $hdrs headers, no include cycle; bindings include only microml.h of the runtime"
exit $fail
