#!/usr/bin/env bash
# llama.cpp's OpenAI-compatible server (llama-cpp-python[server]) in .venv: the real inference server of the
# served-teacher tests (tests/test_llama_cpp_teacher.py), installed by the test command only (the quick start does
# not need it). PyPI has only its source: llama.cpp is compiled here (cmake and a C++ compiler; 2 min 38 s measured
# on 2 cores), without the multimodal library that nothing here uses. Re-running is free once it is installed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
if .venv/bin/python -c "import llama_cpp.server.app" 2>/dev/null; then
  exit 0
fi
log=.venv/setup-llama-cpp.log
echo "[setup] building llama-cpp-python 0.3.36 from source (llama.cpp's server for the tests; ~3 min on 2 cores)"
if ! CMAKE_ARGS="-DLLAVA_BUILD=OFF" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" .venv/bin/python -m pip install \
    --disable-pip-version-check "llama-cpp-python[server]==0.3.36" >"$log" 2>&1; then
  cat "$log" >&2
  echo "[setup] building llama-cpp-python failed (log above, also in $log; it needs cmake and a C++ compiler)" >&2
  exit 1
fi
