#!/bin/sh
# check_layers.sh — the object files of one layer must not call each other
# in a cycle.
#
#   tools/check_layers.sh DIR          every DIR/*.o
#   tools/check_layers.sh A.o B.o ...  just these objects
#
# For each object, its undefined symbols (nm -u) are mapped to the object
# that defines them (nm --defined-only -g); each such pair is an edge
# "user definer".  tsort(1) orders the edges; if it reports a loop, the
# objects of the loop are printed and the exit status is 1.  Symbols defined
# outside the set (libc, Lua, another layer) make no edge.  With -v the
# edges are printed too.
set -eu
export LC_ALL=C
verbose=0
if [ "${1:-}" = "-v" ]; then verbose=1; shift; fi
if [ $# -eq 0 ]; then echo "usage: $0 [-v] DIR | OBJ.o..." >&2; exit 2; fi
if [ $# -eq 1 ] && [ -d "$1" ]; then
  set -- "$1"/*.o
  [ -e "$1" ] || { echo "check_layers: no .o files" >&2; exit 2; }
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# symbol -> defining object (basename without .o)
for o in "$@"; do
  n=$(basename "$o" .o)
  nm --defined-only -g "$o" | awk -v n="$n" 'NF >= 3 { print $3, n }'
done | sort -k1,1 > "$tmp/defs"
dups=$(awk '{ print $1 }' "$tmp/defs" | uniq -d)
if [ -n "$dups" ]; then
  echo "check_layers: symbols defined in more than one object:" >&2
  for s in $dups; do grep "^$s " "$tmp/defs" >&2; done
  exit 1
fi

# edges: user -> definer (self-edges dropped; every object is a node)
for o in "$@"; do
  n=$(basename "$o" .o)
  echo "$n $n"
  nm -u "$o" | awk '{ print $NF }' | sort -u | join - "$tmp/defs" |
    awk -v n="$n" '$2 != n { print n, $2 }'
done | sort -u > "$tmp/edges"
[ $verbose -eq 1 ] && grep -v '^\(\S*\) \1$' "$tmp/edges" || true

if tsort "$tmp/edges" > "$tmp/order" 2> "$tmp/err"; then
  edges=$(awk '$1 != $2' "$tmp/edges" | wc -l)
  echo "check_layers: $(dirname "$1"): $# objects, $edges edges, no cycle"
  exit 0
fi
echo "check_layers: cycle between objects:" >&2
grep -v 'input contains a loop' "$tmp/err" | sed 's/^tsort: /  /' >&2
exit 1
