#!/bin/sh
# POST /command with its optional fields: as uid 1000 (execd must run as
# root for that), in that user's home (`/` for a uid without a passwd
# entry), with one more variable and a 60 s time limit.
addr="${EXECD_ADDR:-localhost:44772}"
curl -sN "$addr/command" -d '{
  "command": "id -u; pwd; echo \"CI=$CI\"", "cwd": "~", "envs": {"CI": "1"},
  "timeout": 60000, "background": false, "uid": 1000, "gid": 1000
}'
