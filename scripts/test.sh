#!/usr/bin/env bash
# Run the default test suite: the import contracts of the pure core, then pytest.
# Extra arguments go to pytest (for example: scripts/test.sh -m slow, or -k sim).
source "$(dirname "$0")/env.sh"
echo "== import contracts (DESIGN.md section 2)"
lint-imports
echo "== pytest"
exec python -m pytest "$@"
