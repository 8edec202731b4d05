#!/bin/bash
# execd's CPU (utime+stime) for one 256 MiB stream of 1 KiB lines read by a
# plain `curl -sN -o /dev/null`, and its threads' voluntary context switches.
# Alternate two binaries (or one binary with and without a flag) to compare:
#   for i in 1 2 3 4; do bench/stream-cpu.sh OLD; bench/stream-cpu.sh NEW; done
# usage: stream-cpu.sh EXECD [execd args...]
set -e
bin=$1; shift
dd=$(mktemp -u -d /tmp/stream-cpu-XXXXXX)
"$bin" --port 0 --bind 127.0.0.1 --data-dir "$dd" "$@" > /dev/null 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$dd"' EXIT
port=
for _ in $(seq 1 100); do
  port=$(ss -ltnp 2>/dev/null | grep "pid=$pid," | head -n1 | awk '{print $4}' | sed 's/.*://')
  [ -n "$port" ] && break
  sleep 0.1
done
tick=$(getconf CLK_TCK)
cpu() { awk '{print $14+$15}' /proc/$pid/stat; }
ut() { awk '{print $14}' /proc/$pid/stat; }
cs() { cat /proc/$pid/task/*/status | awk '/^voluntary_ctxt_switches/{s+=$2} END{print s}'; }
c0=$(cpu); u0=$(ut); s0=$(cs)
curl -sN -o /dev/null -X POST -H 'content-type: application/json' \
  "http://127.0.0.1:$port/command" \
  -d '{"command":"head -c 268435456 /dev/zero | tr '"'"'\\0'"'"' x | fold -w 1023"}'
c1=$(cpu); u1=$(ut); s1=$(cs)
echo "$(basename "$bin") $*: execd CPU $(( (c1 - c0) * 1000 / tick )) ms (user $(( (u1 - u0) * 1000 / tick )) ms), voluntary context switches $((s1 - s0))"
