#!/bin/sh
# Inject execd into any image with Docker, the way the Kubernetes example does:
# copy the binary into a volume once, then start the workload through `execd init`.
set -eu
IMAGE=${IMAGE:-docker.io/library/python:3.12-slim}
EXECD_IMAGE=${EXECD_IMAGE:-execd:latest}

docker volume create execd-bin >/dev/null
docker run --rm -v execd-bin:/opt/execd "$EXECD_IMAGE" install /opt/execd/execd

docker run -d --name sandbox -p 44772:44772 -p 8000:8000 \
  -v execd-bin:/opt/execd:ro \
  -e EXECD_ACCESS_TOKEN="${EXECD_ACCESS_TOKEN:-}" \
  --entrypoint /opt/execd/execd \
  "$IMAGE" init -- python -m http.server 8000
