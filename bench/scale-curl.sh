#!/bin/bash
# The scale group's live-commands figure with plain curl clients, for
# measuring execd's memory per command without building the bench:
#   bench/scale-curl.sh EXECD PORT N [execd flags...]
# starts EXECD on 127.0.0.1:PORT, runs N `curl -N` clients at once, each
# POSTing a command that prints 1 MiB in 1 KiB lines (four bursts of 256
# `echo`s, 0.5 s apart, as the bench's), and prints execd's VmHWM, idle
# RSS, KiB per command above idle, short streams, and execd's CPU ticks.
# Raise the open-files limit first for large N (each client is 2 fds).
set -u
BIN=$1; PORT=$2; N=$3; shift 3
L=$(printf 'x%.0s' $(seq 1023))
SCRIPT="L=$L; for i in 1 2 3 4; do for j in {1..256}; do echo \$L; done; sleep 0.5; done"
D=$(mktemp -d)
"$BIN" --port "$PORT" --bind 127.0.0.1 --data-dir "$D/data" "$@" 2>"$D/log" &
PID=$!
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$PORT/ping" && break; sleep 0.05; done
python3 -c 'import json,sys; print(json.dumps({"command": sys.argv[1]}))' "$SCRIPT" > "$D/body"
R0=$(awk '/VmRSS/{print $2}' "/proc/$PID/status")
C0=$(awk '{print $14+$15}' "/proc/$PID/stat")
CLIENTS=()
for i in $(seq "$N"); do
  curl -sS -N -o /dev/null -w "%{size_download}\n" -X POST -H 'content-type: application/json' \
    --data-binary @"$D/body" "http://127.0.0.1:$PORT/command" > "$D/c.$i" &
  CLIENTS+=($!)
done
wait "${CLIENTS[@]}"
C1=$(awk '{print $14+$15}' "/proc/$PID/stat")
HWM=$(awk '/VmHWM/{print $2}' "/proc/$PID/status")
SHORT=$(cat "$D"/c.* | awk '$1 < 1048576 {n++} END {print n+0}')
echo "N=$N VmHWM=$((HWM / 1024))MiB idle=$((R0 / 1024))MiB per_command=$(((HWM - R0) / N))KiB short=$SHORT cpu_ticks=$((C1 - C0))"
kill "$PID"
wait "$PID" 2>/dev/null
rm -rf "$D"
