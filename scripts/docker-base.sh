#!/usr/bin/env bash
# Build the local base image for the Dockerfile on a machine that cannot pull from a
# registry (DESIGN.md section 8): ../shared/docker/make-base.sh makes a Debian root
# filesystem with Python 3 and /opt/venv holding chainlab's runtime dependencies (taken
# and its build backend, both read from pyproject.toml so there is one list), then
# `docker import`s it. The Dockerfile then installs chainlab itself with --no-index.
#
#   scripts/docker-base.sh [IMAGE]      (default chainlab-base:local)
#   BASE_IMAGE=chainlab-base:local docker compose build
#
# Needs root (make-base.sh runs mmdebstrap) and about a minute. MAKE_BASE overrides
# where make-base.sh is; REBUILD=1 rebuilds an image that already exists.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
IMAGE="${1:-chainlab-base:local}"
MAKE_BASE="${MAKE_BASE:-$ROOT/../shared/docker/make-base.sh}"
PYTHON="${PYTHON:-python3}"

if [ "${REBUILD:-0}" != 1 ] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
  echo "docker-base: $IMAGE exists (REBUILD=1 rebuilds it)" >&2
  exit 0
fi
[ -f "$MAKE_BASE" ] || { echo "docker-base: $MAKE_BASE not found (set MAKE_BASE)" >&2; exit 1; }

old_id="$(docker image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# The image's requirements: pyproject.toml's runtime dependencies, and its build backend
# (setuptools), so that `pip install --no-index --no-build-isolation .` works offline.
"$PYTHON" - "$ROOT/pyproject.toml" > "$work/requirements.txt" <<'EOF'
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    project = tomllib.load(f)
print("\n".join(project["project"]["dependencies"] + project["build-system"]["requires"]))
EOF
echo "docker-base: requirements: $(tr '\n' ' ' < "$work/requirements.txt")" >&2
start=$(date +%s)
# make-base.sh is run with bash: the shared copy may lack its execute bit.
REQUIREMENTS="$work/requirements.txt" IMPORT_AS="$IMAGE" HOST_PYTHON="$PYTHON" \
  bash "$MAKE_BASE" "$work/base.tar"
echo "docker-base: $IMAGE built in $(( $(date +%s) - start )) s" >&2
# The image it replaces is untagged now; remove it unless something still uses it.
if [ -n "$old_id" ] && [ "$old_id" != "$(docker image inspect --format '{{.Id}}' "$IMAGE")" ]; then
  docker image rm "$old_id" >/dev/null 2>&1 || true
fi
