#!/usr/bin/env bash
# The main job on the embedded default: set up .venv if needed, build (or reuse) the embedded teacher
# and student, train cmdp, soft_penalty and grpo at the default threshold, evaluate each, print a table.
# Extra arguments are Hydra overrides applied to every run (e.g. constraint.threshold=8 optim.steps=50).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
start=$(date +%s)
bash scripts/setup_env.sh
sweep="outputs/sweeps/quickstart-$(date +%Y-%m-%d_%H-%M-%S)"
.venv/bin/cdistill train -m method=cmdp,soft_penalty,grpo "hydra.sweep.dir=$sweep" "$@"
echo
.venv/bin/cdistill report "$sweep"
echo "quickstart finished in $(( $(date +%s) - start )) s; runs in $sweep"
