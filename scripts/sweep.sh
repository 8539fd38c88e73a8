#!/usr/bin/env bash
# The threshold sweep on the embedded default: cmdp, lagrangian, soft_penalty and grpo at three budgets
# (Hydra multirun, one job after another), then one report (table, Pareto plot, training curves).
# Extra arguments are Hydra overrides for every run, e.g. constraint.threshold=4,8,16 optim.steps=100.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
start=$(date +%s)
bash scripts/setup_env.sh
sweep="outputs/sweeps/threshold-$(date +%Y-%m-%d_%H-%M-%S)"
.venv/bin/cdistill train -m method=cmdp,lagrangian,soft_penalty,grpo constraint.threshold=5,10,20 \
  logging.progress=false "hydra.sweep.dir=$sweep" "$@"
.venv/bin/cdistill report "$sweep"
echo "sweep finished in $(( $(date +%s) - start )) s; report in $sweep/report.md"
