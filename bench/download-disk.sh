#!/usr/bin/env bash
# 1 GiB download written to disk by the client, in one run, against local
# copies of the same file and a trivial server (issue 20 §2). Per round,
# alternating (each copy removed and `sync`ed before the next):
#   cat                   `cat src > copy`: one in-kernel copy (copy_file_range)
#   curl file://          `curl -o copy file://src`: curl's own read + write, no network
#   curl<-static          `curl -o FILE` from bench/static-server.py: a trivial server,
#                         one blocking sendfile of the whole file (what Go's net/http does)
#   curl<-static+lowat    the same with TCP_NOTSENT_LOWAT 32 KiB, as execd sets
#   curl<-execd           `curl -o FILE` of /files/download from execd (sendfile, the default)
#   curl<-execd-copy      the same with --no-sendfile (copied through user space)
#   curl<-old             the same from OLD_EXECD_BINARY, if given (an A/B in the same run)
#   curl<-go              `curl -o FILE` from bench/go-download (if `go` is installed): Go's
#                         net/http ServeContent behind a writer without ReadFrom, which is
#                         Go execd's download path (gin 1.10): 32 KiB copies, no sendfile
#   curl<-go+sendfile     the same server letting net/http use sendfile
#   splice<-static        bench/splice-client.py: the body goes socket -> pipe -> file with
#   splice<-execd         splice(2), never through user space (the cheapest client possible)
# Each line: wall time to the client's exit, the server's CPU (utime+stime from
# /proc/PID/stat) and the client's CPU. Then the medians, and execd's ratios
# to cat and to the trivial server with the same client. Nothing fsyncs; the
# source stays in the page cache; every server is started fresh per download.
# ROWS (an extended regex, e.g. ROWS='^(cat|curl<-execd|curl<-go)$') runs only the rows it matches.
# Usage: bench/download-disk.sh EXECD_BINARY [ROUNDS] [OLD_EXECD_BINARY]
set -euo pipefail
B=${1:?execd binary}
R=${2:-3}
OLD=${3:-}
HERE=$(cd "$(dirname "$0")" && pwd)
D=$(mktemp -d "${TMPDIR:-/tmp}/execd-dl.XXXXXX")
PID=
trap '[ -n "$PID" ] && kill $PID 2>/dev/null; rm -rf "$D"' EXIT
head -c 1073741824 /dev/urandom >"$D/src"
cat "$D/src" >/dev/null
TK=$(getconf CLK_TCK)
GO=
if command -v go >/dev/null; then
  (cd "$HERE/go-download" && GOFLAGS=-mod=mod GOPROXY=off go build -o "$D/go-download" .) && GO=$D/go-download
fi
TIMEFORMAT='%3R %3U %3S'

# start CMD...: runs a server that prints its port (execd: "listening on
# ADDR:PORT"; static-server.py: the port alone); sets PID and PORT.
start() {
  "$@" >"$D/out" 2>"$D/err" &
  PID=$!
  PORT=
  for _ in $(seq 200); do
    PORT=$(grep -o 'listening on [0-9.]*:[0-9]*' "$D/out" | grep -o '[0-9]*$' || true)
    [ -z "$PORT" ] && PORT=$(grep -xo '[0-9][0-9]*' "$D/out" | head -1 || true)
    [ -n "$PORT" ] && break
    sleep 0.05
  done
  [ -n "$PORT" ] || { echo "no port from $*" >&2; cat "$D/err" >&2; exit 1; }
}
stop() { kill "$PID"; wait "$PID" 2>/dev/null || true; PID=; }
ticks() { if [ -n "$PID" ]; then awk '{print $14 + $15}' "/proc/$PID/stat"; else echo 0; fi; }

key() { echo "$1" | tr -c 'A-Za-z0-9\n' _; }

# timed NAME CMD...: runs CMD, checks the copy, prints and records its figures.
want() { [ -z "${ROWS:-}" ] || echo "$1" | grep -Eq -- "$ROWS"; }
timed() {
  local name=$1 c0 c1 t
  shift
  want "$name" || return 0
  rm -f "$D/copy"
  sync
  c0=$(ticks)
  t=$( { time "$@" >/dev/null 2>"$D/cerr"; } 2>&1 ) || { echo "$name failed: $(cat "$D/cerr")" >&2; exit 1; }
  c1=$(ticks)
  cmp -s "$D/src" "$D/copy" || { echo "$name: the copy differs" >&2; exit 1; }
  rm -f "$D/copy"
  read -r wall user sys <<<"$t"
  local srv
  srv=$(echo "scale=3; ($c1 - $c0) / $TK" | bc)
  printf '  %-20s %6.3f s   server CPU %5.2f s   client CPU %5.2f s\n' "$name" "$wall" "$srv" "$(echo "$user + $sys" | bc)"
  grep -qxF "$name" "$D/names" 2>/dev/null || echo "$name" >>"$D/names"
  echo "$wall" >>"$D/t.$(key "$name")"
}
url() { echo "http://127.0.0.1:$PORT/files/download?path=$D/src"; }
curl_o() { curl -sS --fail -o "$D/copy" "$(url)"; }
splice_o() { python3 "$HERE/splice-client.py" "$(url)" "$D/copy"; }
from_execd() { local name=$1 bin=$2 client=$3; shift 3; want "$name" || return 0; start "$bin" --port 0 --bind 127.0.0.1 "$@"; timed "$name" "$client"; stop; }
from_static() { local name=$1 client=$2; shift 2; want "$name" || return 0; start python3 "$HERE/static-server.py" "$@"; timed "$name" "$client"; stop; }

for r in $(seq "$R"); do
  echo "round $r"
  timed cat sh -c 'cat "$1" > "$2"' sh "$D/src" "$D/copy"
  timed "curl file://" curl -sS -o "$D/copy" "file://$D/src"
  from_static "curl<-static" curl_o
  from_static "curl<-static+lowat" curl_o --lowat 32768
  from_execd "curl<-execd" "$B" curl_o
  from_execd "curl<-execd-copy" "$B" curl_o --no-sendfile
  [ -n "$OLD" ] && from_execd "curl<-old" "$OLD" curl_o
  if [ -n "$GO" ]; then
    if want "curl<-go"; then start "$GO"; timed "curl<-go" curl_o; stop; fi
    if want "curl<-go+sendfile"; then start "$GO" -sendfile; timed "curl<-go+sendfile" curl_o; stop; fi
  fi
  from_static "splice<-static" splice_o
  from_execd "splice<-execd" "$B" splice_o
done

med() { sort -n "$D/t.$(key "$1")" | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
echo "medians over $R rounds (wall, s):"
while read -r n; do
  printf '  %-20s %6.3f\n' "$n" "$(med "$n")"
done <"$D/names"
ratio() { [ -s "$D/t.$(key "$1")" ] && [ -s "$D/t.$(key "$2")" ] || { echo "n/a"; return; }; echo "scale=2; $(med "$1") / $(med "$2")" | bc; }
echo "curl<-execd: $(ratio "curl<-execd" cat)x cat, $(ratio "curl<-execd" "curl<-static")x the trivial server," \
  "$(ratio "curl<-execd" "curl file://")x curl file://"
[ -n "$GO" ] && echo "curl<-execd: $(ratio "curl<-execd" "curl<-go")x Go execd's path, $(ratio "curl<-execd" "curl<-go+sendfile")x Go with sendfile"
echo "splice<-execd: $(ratio "splice<-execd" cat)x cat, $(ratio "splice<-execd" "splice<-static")x the trivial server"
