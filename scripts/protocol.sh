#!/usr/bin/env bash
# The project's question, answered as a reviewer would accept it (docs/protocol.md): every method of
# conf/protocol.yaml tuned on its own knobs with the same K trials on the validation split, selected by the declared
# rule, trained again on fresh seeds, read once on test, and judged only on the declared comparisons (Holm).
#   bash scripts/protocol.sh                                   # the embedded default
#   bash scripts/protocol.sh -- +exp=flawed_teacher            # train overrides after --, for every run
#   bash scripts/protocol.sh dir=outputs/studies/<name> ...    # the same command again continues a stopped study
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
start=$(date +%s)
bash scripts/setup_env.sh
.venv/bin/cdistill protocol "$@"
echo "protocol command finished in $(( $(date +%s) - start )) s"
