"""Data parallelism through accelerate (``accelerate launch``): one process per device, each sampling its
own prompts; the student's gradients are averaged by DDP (accelerate's ``prepare``), and the multiplier
and the logged metrics are reduced once per optimiser step. One process: everything is a no-op.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path

import torch

from cdistill.models import Sequences, score


class Scorer(torch.nn.Module):
    """The student's scoring forward as a module, so that a DDP wrapper sees the forward it must see."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, position_ids, completion_ids, completion_mask, budget, prompt_len,
                temperature, chunk, vocab, group_size):
        seq = Sequences(input_ids, attention_mask, position_ids, prompt_len, completion_ids, completion_mask, budget)
        return score(self.model, seq, temperature, chunk, vocab, group_size)


class Dist:
    def __init__(self, device: str):
        from accelerate import Accelerator

        self.accelerator = Accelerator(cpu=device == "cpu")
        self.rank, self.world = self.accelerator.process_index, self.accelerator.num_processes
        self.is_main = self.accelerator.is_main_process

    def scorer(self, student):
        """A callable (seq, temperature, chunk, vocab, group_size) → score(...), gradient-synchronised."""
        module = Scorer(student)
        wrapped = self.accelerator.prepare_model(module) if self.world > 1 else module

        def run(seq: Sequences, temperature, chunk, vocab, group_size=1):
            return wrapped(seq.input_ids, seq.attention_mask, seq.position_ids, seq.completion_ids,
                           seq.completion_mask, seq.budget, seq.prompt_len, temperature, chunk, vocab, group_size)

        run.no_sync = (lambda: self.accelerator.no_sync(wrapped)) if self.world > 1 else None
        return run

    def sum(self, x: torch.Tensor) -> torch.Tensor:
        if self.world == 1:
            return x
        return self.accelerator.reduce(x.clone(), reduction="sum")

    def mean(self, value: float) -> float:
        if self.world == 1:
            return value
        return float(self.sum(torch.tensor(float(value), device=self.accelerator.device))) / self.world

    def weighted(self, record: dict, weights: dict[str, float]) -> dict:
        """Each numeric entry averaged over ranks, weighted by ``weights[key]`` of this rank (default 1)."""
        if self.world == 1:
            return record
        keys = [k for k, v in record.items() if isinstance(v, int | float) and not isinstance(v, bool)]
        w = torch.tensor([float(weights.get(k, 1.0)) for k in keys], dtype=torch.float64)
        v = torch.tensor([float(record[k]) for k in keys], dtype=torch.float64)
        both = self.sum(torch.stack([v * w, w]).to(self.accelerator.device)).cpu()
        return {**record, **{k: float(both[0, i] / both[1, i]) for i, k in enumerate(keys)}}

    def main_first(self):
        """Build shared files (the embedded models' cache) on the main process first; the others reuse them."""
        return self.accelerator.main_process_first() if self.world > 1 else contextlib.nullcontext()

    def barrier(self) -> None:
        if self.world > 1:
            self.accelerator.wait_for_everyone()


def write_rank_state(run_dir: Path, rank: int, student, method_state: dict) -> None:
    """What each rank ended with (a digest of its weights, its method state): ranks of one run must agree."""
    h = hashlib.sha256()
    for name, p in sorted(student.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().cpu().float().numpy().tobytes())
    out = Path(run_dir) / "ranks"
    out.mkdir(exist_ok=True)
    (out / f"rank{rank}.json").write_text(json.dumps({"weights_sha256": h.hexdigest(), "method_state": method_state}))
