#!/bin/sh
# Talk to a running execd with curl (start it first: cargo run --release).
addr="${EXECD_ADDR:-localhost:44772}"
curl -s "$addr/ping" -o /dev/null -w '%{http_code}\n'    # 200
curl -sN "$addr/command" -d '{"command":"echo hi; echo oops >&2; exit 3"}'
