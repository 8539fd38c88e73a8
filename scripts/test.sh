#!/usr/bin/env bash
# The test command: set up .venv if needed, then run the whole test suite (arguments go to pytest).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup_env.sh
bash scripts/setup_llama_cpp.sh  # the served-teacher tests' real server
.venv/bin/python -m ruff check cdistill tests scripts
exec .venv/bin/python -m pytest "$@"
