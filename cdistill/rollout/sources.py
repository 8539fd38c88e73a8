"""Where a training batch comes from: the prompt stream, and the completions for its prompts. Every method's
batch goes through the same scoring and update;
only its completions differ: the student's samples (on-policy RL, ``opd``, ``gkd``), the teacher's
samples (``gkd`` off-policy), the dataset's reference solutions (``sft``, ``gkd``), the teacher's greedy
solutions cached on disk (``seqkd``), or the budget-conditioned student's samples (``saute``)."""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path

import torch

from cdistill.jsonl import read_jsonl
from cdistill.models.forward import Sequences
from cdistill.objectives.masks import completion_mask
from cdistill.rollout.budget_sampler import BudgetTracking
from cdistill.rollout.sampling import Rollout, generate, generation_config
from cdistill.rollout.source import Source


class PromptStream:
    """Training problems in a seeded random order, reshuffled at each pass."""

    def __init__(self, problems, seed: int):
        self.problems, self.rng, self.order = problems, random.Random(seed), []

    def state_dict(self) -> dict:
        return {"rng": self.rng.getstate(), "order": list(self.order)}

    def load_state_dict(self, state: dict) -> None:
        self.rng.setstate(state["rng"])
        self.order = list(state["order"])

    def next(self, n: int):
        out = []
        while len(out) < n:
            if not self.order:
                self.order = list(range(len(self.problems)))
                self.rng.shuffle(self.order)
            out.append(self.problems[self.order.pop()])
        return out


def budget_tracking(parts, cfg) -> BudgetTracking:
    c = cfg.constraint
    return BudgetTracking(parts.teacher, c.cost, c.kind, float(c.threshold), parts.vocab, cfg.rollout.temperature)


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
        # a line cut short by a killed run is skipped: that prompt is generated again
        rows = read_jsonl(self.path, skip_malformed=True) if self.path.is_file() else []
        return {row["prompt"]: row["completion"] for row in rows}

    def get(self, parts, cfg, prompts: list[str]) -> list[str]:
        if self.known is None:
            self.known = self._load()
        missing = list(dict.fromkeys(p for p in prompts if p not in self.known))
        if missing:
            gen = generation_config(parts.tokenizer, cfg.rollout.max_new_tokens, 1.0, 1.0, True)
            out = generate(parts.teacher, parts.tokenizer, missing, 1, gen, parts.device, parts.task.add_special_tokens)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as fh:
                for p, text in zip(missing, out.texts, strict=True):
                    self.known[p] = text
                    fh.write(json.dumps({"prompt": p, "completion": text}) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            self.generated += len(missing)
        return [self.known[p] for p in prompts]


def draw_rollout(source: Source, parts, cfg, problems, per_prompt: int, gen,
                 solutions: TeacherSolutions | None = None, sampler=None) -> Rollout:
    """The completions of one training batch from ``source`` for ``problems`` (``per_prompt`` of each if
    sampled). ``sampler`` (``engines.EngineSampler``, ``rollout.backend=vllm``) samples the student instead
    of ``generate``."""
    source = Source(source)  # a plain name ("student") too
    prompts = [parts.task.prompt(p) for p in problems]
    special, n = parts.task.add_special_tokens, cfg.rollout.max_new_tokens
    tok, device = parts.tokenizer, parts.device
    if source is Source.STUDENT and sampler is not None:
        return sampler.sample(parts.student, prompts, per_prompt, gen, special)
    if source is Source.STUDENT:
        return generate(parts.student, tok, prompts, per_prompt, gen, device, special)
    if source is Source.TEACHER:
        return generate(parts.teacher, tok, prompts, per_prompt, gen, device, special)
    if source is Source.BUDGET:
        return generate(parts.student, tok, prompts, per_prompt, gen, device, special, budget_tracking(parts, cfg))
    if source is Source.REFERENCE:
        return fixed_rollout(tok, prompts, [p.solution for p in problems], n, device, special)
    if source is Source.TEACHER_CACHED:
        return fixed_rollout(tok, prompts, solutions.get(parts, cfg, prompts), n, device, special)
    raise ValueError(f"batch source {source} has no rollout")
