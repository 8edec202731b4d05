#!/bin/bash
# execd's CPU per streamed 1 KiB event against the floor measured in the same
# run: ROUNDS rounds (default 5), each running the bare relay, the relay that
# also appends every read to a file (execd's durable log does the same
# kernel work: pipe read, file write, socket write), and then
# `bench/stream-cpu.sh` for every binary given. Prints each run, then the
# medians and each binary's ratio to the relay-with-log floor. CPU per event
# moves with the machine (a bare relay took 0.27-0.38 us on one VM and
# 0.88-1.30 us on another), the ratio much less.
# usage: stream-floor.sh [-n ROUNDS] EXECD [EXECD...]
set -e
here=$(cd "$(dirname "$0")" && pwd)
rounds=5
if [ "$1" = -n ]; then rounds=$2; shift 2; fi
[ $# -ge 1 ] || { echo "usage: stream-floor.sh [-n ROUNDS] EXECD [EXECD...]" >&2; exit 2; }
spill=$(mktemp -d /tmp/stream-floor-XXXXXX)
out=$(mktemp /tmp/stream-floor-XXXXXX.txt)
trap 'rm -rf "$spill" "$out"' EXIT
for r in $(seq 1 "$rounds"); do
  python3 "$here/relay-floor.py" | sed 's/^/relay /' | tee -a "$out"
  python3 "$here/relay-floor.py" --spill "$spill" | sed 's/^/spill /' | tee -a "$out"
  for b in "$@"; do
    "$here/stream-cpu.sh" "$b" | sed "s|^|bin:$b |" | tee -a "$out"
  done
done
median() { sort -n | awk '{v[NR]=$1} END{if (NR%2) print v[(NR+1)/2]; else print (v[NR/2]+v[NR/2+1])/2}'; }
# relay-floor.py prints "CPU N ms"; stream-cpu.sh prints "execd CPU N ms".
ms() { sed -E 's/.* CPU ([0-9]+) ms.*/\1/'; }
bare=$(grep '^relay ' "$out" | ms | median)
floor=$(grep '^spill ' "$out" | ms | median)
echo "medians of $rounds (ms of CPU per 256 MiB = 262,144 events):"
echo "  bare relay $bare ms ($(awk -v m="$bare" 'BEGIN{printf "%.2f", m*1000/262144}') us/event)"
echo "  relay + log $floor ms ($(awk -v m="$floor" 'BEGIN{printf "%.2f", m*1000/262144}') us/event)"
for b in "$@"; do
  m=$(grep "^bin:$b " "$out" | ms | median)
  echo "  $(basename "$b") $m ms ($(awk -v m="$m" 'BEGIN{printf "%.2f", m*1000/262144}') us/event), $(awk -v m="$m" -v f="$floor" 'BEGIN{printf "%.2f", m/f}')x the relay + log floor"
done
