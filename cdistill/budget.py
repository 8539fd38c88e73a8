"""The remaining-budget input of a ``saute`` student: z_t / d → a vector added to the input embedding.

It lives on the Hugging Face model as the submodule ``budget_input`` (so the optimiser, ``.to()`` and
autocast see it), is saved as ``budget_input.safetensors`` beside the HF checkpoint, and is left out of
the HF weights, so ``AutoModelForCausalLM.from_pretrained`` still loads the plain student.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

FILE = "budget_input.safetensors"


class BudgetInput(torch.nn.Module):
    def __init__(self, hidden: int, clip: float = 1.0):
        super().__init__()
        self.clip = clip
        self.proj = torch.nn.Linear(1, hidden)
        # zero at the start: the augmented student begins exactly where the plain one is
        torch.nn.init.zeros_(self.proj.weight)
        torch.nn.init.zeros_(self.proj.bias)

    def forward(self, budget: torch.Tensor) -> torch.Tensor:
        # z_t / d is unbounded below once the budget is exhausted: clipped so one input cannot dominate
        z = budget.clamp(-self.clip, self.clip).unsqueeze(-1).to(self.proj.weight.dtype)
        return self.proj(z)


def has_budget_input(model) -> bool:
    return isinstance(getattr(model, "budget_input", None), BudgetInput)


def attach(model, clip: float = 1.0) -> BudgetInput:
    emb = model.get_input_embeddings().weight
    model.budget_input = BudgetInput(emb.shape[1], clip).to(device=emb.device, dtype=emb.dtype)
    return model.budget_input


def embed(model, input_ids: torch.Tensor, budget: torch.Tensor) -> torch.Tensor:
    """Input embeddings of ``input_ids`` plus the budget vectors of ``budget`` (same shape as the ids)."""
    return model.get_input_embeddings()(input_ids) + model.budget_input(budget)


def save(model, out_dir: Path) -> None:
    save_file(model.budget_input.state_dict(), str(Path(out_dir) / FILE),
              metadata={"clip": json.dumps(model.budget_input.clip)})


def load_if_present(model, path: str | Path) -> bool:
    """Attach and load the budget input saved beside a checkpoint; False when there is none."""
    f = Path(path) / FILE
    if not f.is_file():
        return False
    from safetensors import safe_open

    with safe_open(str(f), "pt") as fh:
        clip = json.loads(fh.metadata()["clip"])
    attach(model, clip).load_state_dict(load_file(str(f)))
    return True


def is_peft(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "merge_and_unload")


def save_student(model, tokenizer, out_dir: Path, final: bool = True, state_dict: dict | None = None) -> None:
    """The student in Hugging Face format (plus its budget input, for ``saute``).

    A LoRA student is saved merged when ``final`` (a plain model that ``from_pretrained`` loads without
    cdistill or peft; the merge happens in place, after training) and as its adapter otherwise (checkpoints:
    the base model is the run's configured student). ``state_dict``: the weights to write instead of the
    model's own (a sharded student's, gathered).
    """
    out_dir = Path(out_dir)
    if is_peft(model):
        if not final:
            model.save_pretrained(out_dir)
            tokenizer.save_pretrained(out_dir)
            return
        model = model.merge_and_unload()
    extra = model.budget_input if has_budget_input(model) else None
    if extra is not None:
        del model.budget_input  # not an HF weight: saved on its own below
    try:
        model.save_pretrained(out_dir, state_dict=state_dict)
        tokenizer.save_pretrained(out_dir)
    finally:
        if extra is not None:
            model.budget_input = extra
    if extra is not None:
        save(model, out_dir)
