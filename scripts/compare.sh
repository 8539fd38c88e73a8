#!/usr/bin/env bash
# The project's question as one command, on the embedded default: does a hard divergence budget (cmdp) beat a
# tuned fixed penalty (soft_penalty) or a learned multiplier (lagrangian)?
#   cmdp and lagrangian at each budget d in $BUDGETS, soft_penalty at each penalty in $PENALTIES, every one with
#   each seed in $SEEDS; then `cdistill report`: intervals, Pareto fronts, paired verdicts, and at matched
#   divergence the verdict between the hard budget and the best fixed penalty.
#   The methods in $ENDS (e.g. grpo,opd: reward only, and the teacher only) run with each seed as the two ends.
# Every method gets the same budget of settings (three values of its one knob, the defaults otherwise) and the
# same seeds. Extra arguments are Hydra overrides for every run (e.g. optim.steps=50, or +exp=flawed_teacher).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
BUDGETS="${BUDGETS:-5,10,20}"
PENALTIES="${PENALTIES:-0.03,0.1,0.3}"
SEEDS="${SEEDS:-0,1,2}"
ENDS="${ENDS:-}"
start=$(date +%s)
bash scripts/setup_env.sh
sweep="${SWEEP_DIR:-outputs/sweeps/compare-$(date +%Y-%m-%d_%H-%M-%S)}"
.venv/bin/cdistill train -m method=cmdp,lagrangian "constraint.threshold=$BUDGETS" "seed=$SEEDS" \
  logging.progress=false "hydra.sweep.dir=$sweep" "$@"
.venv/bin/cdistill train -m method=soft_penalty "method.penalty=$PENALTIES" "seed=$SEEDS" \
  logging.progress=false "hydra.sweep.dir=$sweep" "$@"
if [ -n "$ENDS" ]; then
  .venv/bin/cdistill train -m "method=$ENDS" "seed=$SEEDS" logging.progress=false "hydra.sweep.dir=$sweep" "$@"
fi
.venv/bin/cdistill report "$sweep"
echo "comparison finished in $(( $(date +%s) - start )) s; report in $sweep/report.md"
