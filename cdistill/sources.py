"""Where a training batch comes from. Every method's batch goes through the same scoring and update;
only its completions differ: the student's samples (on-policy RL, ``opd``, ``gkd``), the teacher's
samples (``gkd`` off-policy), the dataset's reference solutions (``sft``, ``gkd``), the teacher's greedy
solutions cached on disk (``seqkd``), or the budget-conditioned student's samples (``saute``)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from cdistill.models import Sequences
from cdistill.objectives.masks import completion_mask
from cdistill.rollout import BudgetTracking, Rollout, generate, generation_config

# sources that sample several completions per prompt (the group advantages are normalised over)
SAMPLED = ("student", "teacher", "budget")
SOURCES = (*SAMPLED, "reference", "teacher_cached")


def budget_tracking(comp, cfg) -> BudgetTracking:
    c = cfg.constraint
    return BudgetTracking(comp.teacher, c.cost, c.kind, float(c.threshold), comp.vocab, cfg.rollout.temperature)


def fixed_rollout(tokenizer, prompts: list[str], completions: list[str], max_new_tokens: int, device="cpu",
                  add_special_tokens: bool = True) -> Rollout:
    """Given completions laid out exactly as sampled ones: left-padded prompt, completion + EOS, padding."""
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=add_special_tokens)
    rows = [(tokenizer(c, add_special_tokens=False).input_ids + [tokenizer.eos_token_id])[:max_new_tokens]
            for c in completions]
    t = max(len(r) for r in rows)
    ids = torch.tensor([r + [tokenizer.pad_token_id] * (t - len(r)) for r in rows])
    valid = torch.tensor([[1] * len(r) + [0] * (t - len(r)) for r in rows], dtype=torch.bool)
    # padding may be the EOS token itself: the completion mask keeps the first EOS and drops the rest
    mask = completion_mask(ids, tokenizer.eos_token_id) & valid
    seq = Sequences.build(enc.input_ids.to(device), enc.attention_mask.to(device), ids.to(device), mask.to(device))
    return Rollout(seq, list(completions), 1)


class TeacherSolutions:
    """The teacher's greedy solution to each training prompt, generated once and kept in a JSONL file
    under the cache, keyed by the teacher, the prompt format and the generation length."""

    def __init__(self, cache_dir: str | Path, teacher_id: str, max_new_tokens: int):
        key = hashlib.sha256(json.dumps([teacher_id, max_new_tokens]).encode()).hexdigest()[:16]
        self.path = Path(cache_dir) / f"seqkd-{key}.jsonl"
        self.known: dict[str, str] | None = None  # read on first use: only seqkd ever asks
        self.generated = 0

    def _load(self) -> dict[str, str]:
        known = {}
        if self.path.is_file():
            for line in self.path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:  # a line cut short by a killed run: regenerate that prompt
                    continue
                known[row["prompt"]] = row["completion"]
        return known

    def get(self, comp, cfg, prompts: list[str]) -> list[str]:
        if self.known is None:
            self.known = self._load()
        missing = list(dict.fromkeys(p for p in prompts if p not in self.known))
        if missing:
            gen = generation_config(comp.tokenizer, cfg.rollout.max_new_tokens, 1.0, 1.0, True)
            out = generate(comp.teacher, comp.tokenizer, missing, 1, gen, comp.device, comp.task.add_special_tokens)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as fh:
                for p, text in zip(missing, out.texts, strict=True):
                    self.known[p] = text
                    fh.write(json.dumps({"prompt": p, "completion": text}) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            self.generated += len(missing)
        return [self.known[p] for p in prompts]


def collect(source: str, comp, cfg, problems, k: int, gen, solutions: TeacherSolutions | None = None,
            sampler=None) -> Rollout:
    """The completions of one training batch from ``source`` for ``problems`` (``k`` per prompt if sampled).

    ``sampler`` (``engines.EngineSampler``, ``rollout.backend=vllm``) samples the student instead of ``generate``.
    """
    prompts = [comp.task.prompt(p) for p in problems]
    special, n = comp.task.add_special_tokens, cfg.rollout.max_new_tokens
    if source == "student":
        if sampler is not None:
            return sampler.sample(comp.student, prompts, k, gen, special)
        return generate(comp.student, comp.tokenizer, prompts, k, gen, comp.device, special)
    if source == "teacher":
        return generate(comp.teacher, comp.tokenizer, prompts, k, gen, comp.device, special)
    if source == "budget":
        return generate(comp.student, comp.tokenizer, prompts, k, gen, comp.device, special, budget_tracking(comp, cfg))
    if source == "reference":
        return fixed_rollout(comp.tokenizer, prompts, [p.solution for p in problems], n, comp.device, special)
    if source == "teacher_cached":
        return fixed_rollout(comp.tokenizer, prompts, solutions.get(comp, cfg, prompts), n, comp.device, special)
    raise ValueError(f"unknown batch source {source!r}; expected one of {SOURCES}")
