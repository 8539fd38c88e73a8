"""Several processes through accelerate (``accelerate launch``): one process per device, each sampling its
own prompts; the multiplier and the logged metrics are reduced once per optimiser step. One process:
everything is a no-op.

Two ways to hold the student, both accelerate's: DDP (a full copy per device, gradients averaged) and
FSDP2 (``conf/accelerate/fsdp.yaml``: parameters, gradients and optimiser state sharded across devices,
each decoder layer gathered for its own forward and backward). Either way every forward of the student
enters through one wrapped module, ``ForwardRoot``: scoring reaches the decoder's hidden states and the output
head directly (the chunked log-prob never builds [B, T, V] logits), which only works inside the wrapper's
forward, where FSDP has gathered the embeddings, the final norm and the head. Under FSDP, generation is a
registered forward of that module too, with ``synced_gpus`` so that every rank runs as many forwards as
the slowest.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path

import torch

from cdistill.models.forward import CompletionForward, Sequences, completion_forward
from cdistill.objectives.chunking import ScoringSpec


class ForwardRoot(torch.nn.Module):
    """A model's forward passes as one module, so that a DDP or FSDP wrapper sees every one of them:
    ``forward`` is the scored forward on completions, ``generate`` (registered with FSDP as a forward
    method) samples."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        # accelerate's FSDP auto-wrap shards the layer classes a model names here (decoder layers)
        self._no_split_modules = getattr(model, "_no_split_modules", None)

    def forward(self, seq: Sequences, spec: ScoringSpec):
        return tuple(completion_forward(self.model, seq, spec))

    def generate(self, **kwargs):
        return self.model.generate(**kwargs)


def register_generate(root: ForwardRoot):
    """Make ``generate`` a forward of the FSDP root too: the root's own parameters (embeddings, final norm,
    output head) are gathered for it as for ``forward``."""
    from torch.distributed.fsdp import register_fsdp_forward_method

    register_fsdp_forward_method(root, "generate")
    return root


class Sharded:
    """A model under FSDP (the student; the teacher when ``model.teacher.shard``), as the rest of cdistill uses
    it: forwards go through the FSDP root (``root``); everything else (parameters, config, train/eval, the
    output embedding) is the model's own."""

    def __init__(self, model, root):
        self.__dict__.update(model=model, root=root)

    def __getattr__(self, name):
        return getattr(self.model, name)

    def generate(self, **kwargs):
        return self.root.generate(synced_gpus=True, **kwargs)

    def completion_forward(self, seq: Sequences, spec: ScoringSpec) -> CompletionForward:
        return CompletionForward(*self.root(seq, spec))


class StudentForward:
    """The student's scored forward as the launch wraps it (plain, DDP or FSDP2), the one every update goes
    through: gradients are synchronised across ranks."""

    def __init__(self, wrapped, no_sync=None):
        self.wrapped, self._no_sync = wrapped, no_sync

    def __call__(self, seq: Sequences, spec: ScoringSpec) -> CompletionForward:
        return CompletionForward(*self.wrapped(seq, spec))

    def accumulating(self, last: bool):
        """Around the backward of one micro-batch: DDP all-reduces at every backward unless told not to, so
        gradients are synchronised with the last micro-batch only (FSDP2 reduce-scatters every backward)."""
        return contextlib.nullcontext() if last or self._no_sync is None else self._no_sync()


class Dist:
    def __init__(self, device: str):
        from accelerate import Accelerator
        from accelerate.utils import DistributedType

        self.accelerator = Accelerator(cpu=device == "cpu")
        self.rank, self.world = self.accelerator.process_index, self.accelerator.num_processes
        self.is_main = self.accelerator.is_main_process
        kind = self.accelerator.distributed_type
        if kind == DistributedType.FSDP and not self.accelerator.is_fsdp2:
            raise ValueError("FSDP version 1 is not supported; set fsdp_version: 2 (conf/accelerate/fsdp.yaml)")
        if kind == DistributedType.DEEPSPEED:
            raise ValueError("DeepSpeed is not supported: shard the student with FSDP2 instead (accelerate launch "
                             "--config_file conf/accelerate/fsdp.yaml); see docs/scaling.md")
        # FSDP2 shards the student: its forwards are collective (every rank takes part in each, evaluation
        # included), so they go through the wrapper and generation is synchronised
        self.sharded = self.world > 1 and self.accelerator.is_fsdp2
        self.kind = ("fsdp2" if self.sharded else "ddp") if self.world > 1 else "none"

    def prepare(self, student, optimizer) -> tuple[object, StudentForward, torch.optim.Optimizer]:
        """(student, its scored forward, optimizer) ready for this launch; under FSDP the student comes back
        as a ``Sharded`` and the optimizer holds the sharded parameters."""
        module = ForwardRoot(student)
        if self.world == 1:
            return student, StudentForward(module), optimizer
        if self.sharded:
            wrapped, optimizer = self.accelerator.prepare(module, optimizer)
            return Sharded(student, register_generate(wrapped)), StudentForward(wrapped), optimizer
        wrapped = self.accelerator.prepare_model(module)
        return student, StudentForward(wrapped, lambda: self.accelerator.no_sync(wrapped)), optimizer

    def token_denominator(self, mask: torch.Tensor) -> torch.Tensor:
        """What a token mean divides by: this batch's token count, or under several processes the mean count
        per rank (DDP and FSDP average gradients over ranks, so every rank's token weighs the same)."""
        denom = mask.sum().clamp(min=1)
        return self.sum(denom.float()) / self.world if self.world > 1 else denom

    def step(self, params, optimizer, grad_clip: float, loss_finite: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """Clip and apply the optimiser step on every rank, or on none when any rank's loss or gradient norm
        is not finite (gradients dropped). Returns (gradient norm before clipping, whether applied)."""
        norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
        if hasattr(norm, "full_tensor"):  # a DTensor under FSDP: the norm over every rank's shard
            norm = norm.full_tensor()
        ok = self.all_true(loss_finite & torch.isfinite(norm))
        if ok:
            optimizer.step()
        else:
            optimizer.zero_grad(set_to_none=True)
        return norm.detach(), ok

    def all_true(self, flag: torch.Tensor) -> bool:
        """Whether ``flag`` holds on every rank: the one host sync of an optimiser step."""
        f = flag.float()
        if self.world > 1:
            f = (self.sum(f.to(self.accelerator.device)) == self.world).float()
        return bool(f)

    def prepare_teacher(self, teacher, t_cfg):
        """Under FSDP, the frozen teacher sharded the same way (inference only: no optimiser, no gradients)
        unless ``model.teacher.shard`` is false or its weights are quantized (bitsandbytes tensors do not
        shard): then each rank holds a full copy, as under DDP."""
        if not self.sharded or not t_cfg.get("shard", True) or t_cfg.get("quantization") or \
                getattr(teacher, "served", False) or getattr(teacher, "cross_tokenizer", False):
            return teacher  # a teacher with another tokenizer is held whole: its forward is its own
        # accelerate's own FSDP2 wrapping of one model (its prepare() insists on an optimiser alongside)
        from accelerate.utils.fsdp_utils import fsdp2_prepare_model

        return Sharded(teacher, register_generate(fsdp2_prepare_model(self.accelerator, ForwardRoot(teacher))))

    def state_dict(self, student) -> dict:
        """The student's full state dict (gathered from every rank under FSDP: all ranks must call this)."""
        if not self.sharded:
            return student.state_dict()
        return {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).cpu()
                for k, v in student.model.state_dict().items()}

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


def write_rank_state(run_dir: Path, rank: int, state: dict, method_state: dict) -> None:
    """What each rank ended with (a digest of its weights, its method state): ranks of one run must agree."""
    h = hashlib.sha256()
    for name, p in sorted(state.items()):
        h.update(name.encode())
        h.update(p.detach().cpu().float().numpy().tobytes())
    out = Path(run_dir) / "ranks"
    out.mkdir(exist_ok=True)
    (out / f"rank{rank}.json").write_text(json.dumps({"weights_sha256": h.hexdigest(), "method_state": method_state}))
