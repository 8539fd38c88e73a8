"""Two processes (gloo, CPU) train one student: every rank samples its own prompts, DDP averages the
gradients, λ is updated from every rank's batch: the ranks must end with the same weights and λ."""

import json
import shutil
import subprocess
import sys

import pytest
from helpers import TINY


def test_two_processes_agree_on_the_weights_and_the_multiplier(tmp_path):
    torchrun = shutil.which("torchrun") or str(__import__("pathlib").Path(sys.executable).parent / "torchrun")
    run = tmp_path / "run"
    overrides = [o for o in TINY if not o.startswith("scoring.micro_batch")]
    r = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", "29561", "-m", "cdistill.cli", "train",
                        *overrides, "scoring.micro_batch=6", "optim.steps=3", "optim.lr=1e-2", "method=lagrangian",
                        "method.lr=0.5", "method.ema_decay=0", "constraint.threshold=0.001",
                        f"paths.cache={tmp_path / 'cache'}", f"hydra.run.dir={run}"],
                       capture_output=True, text=True, timeout=600, env={**__import__("os").environ,
                                                                         "TOKENIZERS_PARALLELISM": "false"})
    if r.returncode and "Address already in use" in r.stderr:
        pytest.skip("port 29561 is taken on this machine")
    assert r.returncode == 0, r.stderr[-3000:]
    ranks = [json.loads((run / "ranks" / f"rank{i}.json").read_text()) for i in (0, 1)]
    # the ranks sampled different prompts (seed + rank): only synchronised gradients give equal weights
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]
    assert ranks[0]["method_state"] == ranks[1]["method_state"] and ranks[0]["method_state"]["lam"] > 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["method_state"] == ranks[0]["method_state"]
    lams = [json.loads(x)["lambda"] for x in (run / "metrics.jsonl").read_text().splitlines() if '"lambda"' in x]
    assert len(lams) == 3 and lams == sorted(lams)  # one record per step, written by the main process only
