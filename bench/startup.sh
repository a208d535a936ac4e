#!/bin/sh
# bench/startup.sh — start-up time of MicroML against PyTorch, side by side.
#
#   bench/startup.sh [BUILD_DIR] [REPEATS]        (make bench runs it)
#
# Owns the start-up comparison: `microml -e ''` (interpreter, runtime and
# every Lua library module that loads eagerly) against
# `/usr/bin/python3 -c 'import torch'`, run alternately REPEATS times
# (default 11), reporting each side's median wall time and the ratio.
# Without PyTorch it says so and prints MicroML's figure alone.
set -eu
BUILD=${1:-build}
REPS=${2:-11}
PY=${PYTHON:-/usr/bin/python3}
MM="$BUILD/microml"
[ -x "$MM" ] || { echo "startup.sh: $MM not built (run make)" >&2; exit 1; }

now() { date +%s.%N; }
# Seconds one run of the command takes (wall clock).
time_one() {
  t0=$(now); "$@" >/dev/null 2>&1; t1=$(now)
  awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.6f\n", b - a }'

}
median() { sort -g | awk '{v[NR]=$1} END {if (NR%2) print v[(NR+1)/2]; else print (v[NR/2]+v[NR/2+1])/2}'; }

have_torch=no
if "$PY" -c 'import torch' >/dev/null 2>&1; then have_torch=yes; fi

mm_file=$(mktemp); py_file=$(mktemp)
trap 'rm -f "$mm_file" "$py_file"' EXIT
i=0
while [ $i -lt "$REPS" ]; do
  time_one "$MM" -e '' >>"$mm_file"
  if [ $have_torch = yes ]; then time_one "$PY" -c 'import torch' >>"$py_file"; fi
  i=$((i + 1))
done
mm_med=$(median <"$mm_file")
echo "Start-up, median of $REPS alternating runs"
printf '  %-36s %8.1f ms\n' "microml -e ''" "$(awk -v m="$mm_med" 'BEGIN { print m * 1000 }')"
if [ $have_torch = yes ]; then
  py_med=$(median <"$py_file")
  printf '  %-36s %8.1f ms\n' "python3 -c 'import torch'" "$(awk -v m="$py_med" 'BEGIN { print m * 1000 }')"
  printf '  ratio MicroML / PyTorch: %.4f\n' "$(awk -v a="$mm_med" -v b="$py_med" 'BEGIN { print a / b }')"
else
  echo "  PyTorch not available ($PY cannot import torch): MicroML's figure alone"
fi
