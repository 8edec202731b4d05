#!/bin/bash
# The scale group's live-commands figure with plain curl clients, for
# measuring execd's memory per command without building the bench:
#   bench/scale-curl.sh EXECD PORT N [execd flags...]
# starts EXECD on 127.0.0.1:PORT, runs N `curl -N` clients at once, each
# POSTing a command that prints 1 MiB in 1 KiB lines (four bursts of 256
# `echo`s, 0.5 s apart, as the bench's), and prints execd's VmHWM, idle
# RSS, KiB per command above idle, short streams, and execd's CPU ticks.
# Raise the open-files limit first for large N (each client is 2 fds).
# Each client's curl exit code, HTTP status and stderr are kept, and a
# summary of failures printed, so that short streams can be explained; so
# are zombies left under execd once every client is done.
set -u
BIN=$1; PORT=$2; N=$3; shift 3
L=$(printf 'x%.0s' $(seq 1023))
SCRIPT="L=$L; for i in 1 2 3 4; do for j in {1..256}; do echo \$L; done; sleep 0.5; done"
D=$(mktemp -d)
if curl -s -o /dev/null "http://127.0.0.1:$PORT/ping"; then
  echo "port $PORT already answers (a leftover daemon?): pick another" >&2; exit 1
fi
"$BIN" --port "$PORT" --bind 127.0.0.1 --data-dir "$D/data" "$@" 2>"$D/log" &
PID=$!
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$PORT/ping" && break; sleep 0.05; done
kill -0 "$PID" 2>/dev/null || { echo "execd exited at start:" >&2; cat "$D/log" >&2; exit 1; }
python3 -c 'import json,sys; print(json.dumps({"command": sys.argv[1]}))' "$SCRIPT" > "$D/body"
R0=$(awk '/VmRSS/{print $2}' "/proc/$PID/status")
C0=$(awk '{print $14+$15}' "/proc/$PID/stat")
CLIENTS=()
for i in $(seq "$N"); do
  { curl -sS -N -o /dev/null -w "%{size_download} %{http_code}\n" -X POST -H 'content-type: application/json' \
    --data-binary @"$D/body" "http://127.0.0.1:$PORT/command" > "$D/c.$i" 2>"$D/e.$i"; echo $? > "$D/x.$i"; } &
  CLIENTS+=($!)
done
wait "${CLIENTS[@]}"
C1=$(awk '{print $14+$15}' "/proc/$PID/stat")
# Write and read system calls (sockets, pipes and spill files alike).
IO=$(awk '/^sysc[rw]:/{printf "%s%s ", $1, $2}' "/proc/$PID/io")
HWM=$(awk '/VmHWM/{print $2}' "/proc/$PID/status")
ZOMBIES=$(ps --ppid "$PID" -o stat= | grep -c '^Z')
SHORT=$(cat "$D"/c.* | awk '$1 < 1048576 {n++} END {print n+0}')
ALIVE=yes; kill -0 "$PID" 2>/dev/null || ALIVE=no
echo "N=$N VmHWM=$(awk -v k="$HWM" 'BEGIN{printf "%.1f", k/1024}')MiB idle=$((R0 / 1024))MiB per_command=$(((HWM - R0) / N))KiB short=$SHORT cpu_ticks=$((C1 - C0)) zombies=$ZOMBIES execd_alive=$ALIVE $IO"
FAILED=$(cat "$D"/x.* | awk '$1 != 0 {n++} END {print n+0}')
NON2XX=$(cat "$D"/c.* | awk '$2 !~ /^2/ {n++} END {print n+0}')
if [ "$SHORT" != 0 ] || [ "$FAILED" != 0 ] || [ "$NON2XX" != 0 ]; then
  echo "curl exit codes (count code):"; cat "$D"/x.* | sort | uniq -c
  echo "HTTP statuses (count status):"; awk '{print $2}' "$D"/c.* | sort | uniq -c
  echo "curl errors (count message):"; cat "$D"/e.* | sort | uniq -c | sort -rn | head
  echo "short streams' sizes (count bytes):"; awk '$1 < 1048576 {print $1}' "$D"/c.* | sort -n | uniq -c | head
  echo "execd's log (last lines):"; tail -n 20 "$D/log"
fi
kill "$PID"
wait "$PID" 2>/dev/null
rm -rf "$D"
