#!/usr/bin/env bash
# llama.cpp's OpenAI-compatible server (llama-cpp-python[server]) in .venv: the real inference server of the
# served-teacher tests (tests/test_llama_cpp_teacher.py), installed by the test command only (the quick start does
# not need it). PyPI has only its source: llama.cpp is compiled here (cmake and a C++ compiler; 2 min 46 s measured
# on 2 cores), without the multimodal library that nothing here uses.
#
# Built for AVX2, not for the host (GGML_NATIVE=OFF): the native build on a Xeon with AMX and AVX-512 segfaulted
# (exit 139) on the first completion of the Q4_1 GGUF while the float32 one worked, and the test machine's CPU is
# not ours to choose. pip's wheel cache is bypassed, since it keys a built wheel by version, not by these flags; a
# stamp holding the flags makes a re-run free once this very build is installed, and rebuilds an older one.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
flags="-DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
stamp=.venv/llama-cpp-build-flags
if [[ -f $stamp && "$(cat "$stamp")" == "$flags" ]] && .venv/bin/python -c "import llama_cpp.server.app" 2>/dev/null
then
  exit 0
fi
log=.venv/setup-llama-cpp.log
echo "[setup] building llama-cpp-python 0.3.36 from source (llama.cpp's server for the tests; ~3 min on 2 cores)"
if ! CMAKE_ARGS="$flags" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" .venv/bin/python -m pip install --no-cache-dir \
    --force-reinstall --no-deps --disable-pip-version-check "llama-cpp-python==0.3.36" >"$log" 2>&1 \
  || ! .venv/bin/python -m pip install --disable-pip-version-check "llama-cpp-python[server]==0.3.36" >>"$log" 2>&1
then
  cat "$log" >&2
  echo "[setup] building llama-cpp-python failed (log above, also in $log; it needs cmake and a C++ compiler)" >&2
  exit 1
fi
echo "$flags" >"$stamp"
