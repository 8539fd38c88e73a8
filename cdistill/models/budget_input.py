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
