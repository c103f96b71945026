# Sourced by the other scripts: make (once) and activate the project's virtual environment.
# The environment lives in .venv at the repository root; delete it to start from scratch.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
  echo "chainlab needs Python 3.11 or newer; set PYTHON=/path/to/python3.11" >&2
  exit 1
fi
STAMP=".venv/.chainlab-installed"
if [ ! -x .venv/bin/python ]; then
  echo "creating the virtual environment in .venv ..." >&2
  "$PYTHON" -m venv .venv
fi
# Reinstall when pyproject.toml changed since the last install.
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
  echo "installing chainlab and its test dependencies into .venv ..." >&2
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e '.[test]'
  touch "$STAMP"
fi
# shellcheck disable=SC1091
source .venv/bin/activate
