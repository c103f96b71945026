#!/usr/bin/env bash
# Build the image and run the docker suite (tests/test_docker.py, marked `docker`).
#
#   scripts/docker-test.sh [PYTEST ARGS...]
#
# Without a reachable Docker engine, or without `docker compose` / `docker-compose`, it
# prints one line saying so and exits 0. Unless BASE_IMAGE is set, the image is built on
# chainlab-base:local, made by scripts/docker-base.sh (no registry needed; REBUILD=1
# makes it again, as CI does). Prints how long the image build took; the suite prints
# how long the testnet took to become healthy.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

if ! command -v docker >/dev/null 2>&1; then
  echo "== docker suite skipped: no docker command on this machine"
  exit 0
fi
if ! docker info >/dev/null 2>&1; then
  echo "== docker suite skipped: no Docker engine reachable (docker info failed)"
  exit 0
fi
if docker compose version >/dev/null 2>&1; then
  COMPOSE=(docker compose)
elif command -v docker-compose >/dev/null 2>&1 && docker-compose version >/dev/null 2>&1; then
  COMPOSE=(docker-compose)
else
  echo "== docker suite skipped: neither \`docker compose\` nor \`docker-compose\` works here"
  exit 0
fi

image_id() { docker image inspect --format '{{.Id}}' "$1" 2>/dev/null || true; }
old_image=$(image_id chainlab:local)
old_base=$(image_id chainlab-base:local)
if [ -z "${BASE_IMAGE:-}" ]; then
  echo "== local base image (../shared/docker/make-base.sh)"
  scripts/docker-base.sh chainlab-base:local
  export BASE_IMAGE=chainlab-base:local
fi
echo "== image chainlab:local on $BASE_IMAGE (${COMPOSE[*]} build)"
start=$(date +%s)
"${COMPOSE[@]}" -f docker-compose.yml build genesis
echo "== image chainlab:local built in $(( $(date +%s) - start )) s"
# The images these replaced are untagged now: remove them unless something still uses them.
[ -z "$old_image" ] || [ "$old_image" = "$(image_id chainlab:local)" ] || docker image rm "$old_image" >/dev/null 2>&1 || true
[ -z "$old_base" ] || [ "$old_base" = "$(image_id chainlab-base:local)" ] || docker image rm "$old_base" >/dev/null 2>&1 || true

echo "== docker suite"
exec scripts/test.sh -m docker "$@"
