#!/bin/bash
# execd's user-space instructions per streamed 1 KiB event, counted by
# valgrind's callgrind (deterministic: the same for the same binary and input,
# whatever else the machine does; kernel work is not counted). Streams MIB
# MiB (default 16) of 1 KiB lines to `curl -sN`, counting only from the
# request on. Prints the total, the count per event, and the top functions
# (names only for a build that keeps its symbols: EXECD_STRIP=0).
# usage: stream-instructions.sh EXECD [MIB]
set -e
bin=$1; mb=${2:-16}
[ -n "$bin" ] || { echo "usage: stream-instructions.sh EXECD [MIB]" >&2; exit 2; }
dd=$(mktemp -u -d /tmp/stream-ir-XXXXXX)
cg=$(mktemp -d /tmp/stream-ir-cg-XXXXXX)
valgrind --tool=callgrind --callgrind-out-file="$cg/out" "$bin" --port 0 --bind 127.0.0.1 \
  --data-dir "$dd" > "$cg/log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$dd" "$cg"' EXIT
port=
for _ in $(seq 1 300); do
  port=$(ss -ltnp 2>/dev/null | grep "pid=$pid," | head -n1 | awk '{print $4}' | sed 's/.*://')
  [ -n "$port" ] && break
  sleep 0.1
done
callgrind_control -z $pid > /dev/null 2>&1
curl -sN -o /dev/null -X POST -H 'content-type: application/json' \
  "http://127.0.0.1:$port/command" \
  -d '{"command":"head -c '$((mb << 20))' /dev/zero | tr '"'"'\\0'"'"' x | fold -w 1023"}'
callgrind_control -d $pid > /dev/null 2>&1
for _ in $(seq 1 100); do [ -s "$cg/out.1" ] && break; sleep 0.1; done
events=$((mb << 10))
total=$(callgrind_annotate "$cg/out.1" 2>/dev/null | awk '/PROGRAM TOTALS/{gsub(",","",$1); print $1}')
echo "$(basename "$bin"): $total instructions for $events events, $((total / events)) per event"
callgrind_annotate --inclusive=no --threshold=100 "$cg/out.1" 2>/dev/null \
  | sed -n '/file:function/,$p' | grep -E '^ *[0-9,]+ \( ?[0-8]?[0-9]\.' | head -12 | cut -c1-150
