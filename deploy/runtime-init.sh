#!/bin/sh
# The control plane's side of the runtime-init handshake, as curl.
# Usage: runtime-init.sh ADDR SANDBOX_ID GENERATION [POOL_TOKEN]
#   ADDR        host:port of the pod's execd (44772)
#   GENERATION  1 at assignment; a restored snapshot gets a higher one, and
#               then the call must carry the previous binding's token instead
#               of the pool token.
# Prints the new sandbox token on stdout: only its sha256 goes to execd.
set -eu
addr=$1 id=$2 gen=$3 auth=${4:-}
token=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
hash=$(printf %s "$token" | sha256sum | cut -d' ' -f1)
curl -fsS -X POST "http://$addr/internal/init" \
  -H 'Content-Type: application/json' \
  ${auth:+-H "X-EXECD-ACCESS-TOKEN: $auth"} \
  -d @- >&2 <<JSON
{
  "sandboxId": "$id",
  "generation": $gen,
  "entrypointPolicy": "restart",
  "accessTokenHash": "sha256:$hash",
  "envs": {"SANDBOX_ID": "$id"},
  "lifecycle": {
    "preStart": [{"command": "mkdir -p /workspace", "timeoutSeconds": 30}],
    "periodic": [{"command": "date > /tmp/heartbeat", "intervalSeconds": 30}]
  },
  "telemetry": {"attributes": {"pool": "default"}}
}
JSON
# Wait until the binding is in place (the readiness probe sees the same).
until curl -fsS "http://$addr/ready" >/dev/null 2>&1; do sleep 0.2; done
echo "$token"
