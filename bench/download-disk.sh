#!/usr/bin/env bash
# 1 GiB download into a file with plain curl, against the same file copied
# locally, in one run (issue 20 §2). Alternates, per round: `cat src > copy`,
# `curl -o FILE` from execd (sendfile, the default), the same with
# `--no-sendfile`, and `curl -o FILE file://src` (curl's own writing, no
# network). Times to the client's exit; nothing fsyncs; the source stays in
# the page cache. Usage: bench/download-disk.sh EXECD_BINARY [ROUNDS]
set -euo pipefail
B=${1:?execd binary}
R=${2:-3}
D=$(mktemp -d "${TMPDIR:-/tmp}/execd-dl.XXXXXX")
trap 'kill $PID 2>/dev/null || true; rm -rf "$D"' EXIT
PID=
head -c 1073741824 /dev/urandom >"$D/src"
cat "$D/src" >/dev/null
start() {
  "$B" --port 0 --bind 127.0.0.1 "$@" >"$D/out" 2>"$D/err" &
  PID=$!
  PORT=
  for _ in $(seq 100); do
    PORT=$(grep -o 'listening on [0-9.]*:[0-9]*' "$D/out" | grep -o '[0-9]*$' || true)
    [ -n "$PORT" ] && break
    sleep 0.05
  done
}
stop() { kill "$PID"; wait "$PID" 2>/dev/null || true; }
secs() { local s e; s=$(date +%s.%N); "$@"; e=$(date +%s.%N); echo "$e - $s" | bc; }
fetch() { curl -sS --fail -o "$D/dl" "http://127.0.0.1:$PORT/files/download?path=$D/src"; }
for r in $(seq "$R"); do
  rm -f "$D/copy" "$D/dl"; sync
  c=$(secs bash -c "cat '$D/src' >'$D/copy'")
  rm -f "$D/copy"; sync
  start; a=$(secs fetch); stop; cmp -s "$D/src" "$D/dl" || { echo "sendfile copy differs"; exit 1; }
  rm -f "$D/dl"; sync
  start --no-sendfile; n=$(secs fetch); stop; cmp -s "$D/src" "$D/dl" || { echo "copied download differs"; exit 1; }
  rm -f "$D/dl"; sync
  f=$(secs curl -sS -o "$D/dl" "file://$D/src")
  printf 'round %s: cat>copy %.3f s  execd sendfile %.3f s  execd --no-sendfile %.3f s  curl file:// %.3f s\n' "$r" "$c" "$a" "$n" "$f"
done
