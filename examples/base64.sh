#!/bin/sh
# Every byte, when asked: output comes back as base64 ("//4K" is 0xff 0xfe \n).
addr="${EXECD_ADDR:-localhost:44772}"
curl -sN "$addr/command" -d '{"argv": ["printf", "\\377\\376\\n"], "output_encoding": "base64"}'
