"""Scoring rollouts: task reward, student and teacher log-probs, costs and constraint statistics.

Training and evaluation both call ``score_rollout``, so the satisfaction rate reported by ``cdistill
eval`` is computed by exactly the code that shaped the training reward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cdistill.methods.base import Scored
from cdistill.models import prompt_groups, score
from cdistill.objectives import constraint_stats, logratio_cost, teacher_nll_cost, token_kl_cost
from cdistill.rollout import Rollout
from cdistill.runtime import out_of_memory_hint


def costs_for(name: str, s_logp, t_logp, s_hidden, t_hidden, s_weight, t_weight, mask, chunk, vocab, temperature):
    """Per-token costs [B, T]; differentiable in the student's log-probs / hidden states / weight if they are."""
    if name == "logratio":
        return logratio_cost(s_logp, t_logp, mask)
    if name == "teacher_nll":
        return teacher_nll_cost(t_logp, mask)
    if name == "token_kl":
        return token_kl_cost(s_hidden, s_weight, t_hidden, t_weight, mask, chunk, vocab, temperature)
    raise ValueError(f"unknown constraint.cost {name!r}; expected logratio, token_kl or teacher_nll")


@dataclass
class Live:
    """One micro-batch re-scored with the student's gradient: what methods' differentiable terms use."""

    rows: torch.Tensor  # indices of the micro-batch in the scored batch
    logp: torch.Tensor  # [b, T] student log-probs (at the rollout temperature), with grad
    hidden: torch.Tensor  # [b, T, H] student final hidden states, with grad
    mask: torch.Tensor  # [b, T]
    teacher_logp: torch.Tensor  # [b, T]
    teacher_hidden: torch.Tensor | None  # [b, T, H] when the scoring kept them
    student_weight: torch.Tensor
    teacher_weight: torch.Tensor
    chunk: int
    vocab: int
    temperature: float

    def cost(self, name: str) -> torch.Tensor:
        """c_t under the cost ``name``, differentiable in the student where it depends on it."""
        return costs_for(name, self.logp, self.teacher_logp, self.hidden, self.teacher_hidden, self.student_weight,
                         self.teacher_weight, self.mask, self.chunk, self.vocab, self.temperature)


@torch.no_grad()  # not inference_mode: see rollout.generate
def score_rollout(rollout: Rollout, problems, task, student, teacher, constraint, temperature: float,
                  chunk: int, vocab: int, micro_batch: int, keep_teacher_hidden: bool = False,
                  student_scores=None, share_prompt: bool = True) -> tuple[Scored, dict[str, torch.Tensor]]:
    """Score every completion of ``rollout`` (``problems`` holds one entry per completion).

    The teacher's [B, T, H] hidden states are kept for full-vocabulary terms of the update (the token_kl
    cost's direct gradient, ``gkd``, ``weakest_link``) when ``keep_teacher_hidden`` or the cost needs them.
    """
    seq = rollout.seq
    g = prompt_groups(rollout.group_size, micro_batch, share_prompt)
    parts, teacher_hidden = [], []
    for start in range(0, seq.input_ids.shape[0], micro_batch):
        mb = seq.select(slice(start, start + micro_batch))
        if student_scores is None:
            s_logp, s_ent, s_h = score(student, mb, temperature, chunk, vocab, g)
        else:
            s_logp, s_ent, s_h = (x[start : start + micro_batch] for x in student_scores)
        with out_of_memory_hint(f"the teacher forward on {mb.input_ids.shape[0]} sequences of {mb.input_ids.shape[1]} "
                                "tokens", "lower scoring.micro_batch or scoring.chunk, or load the teacher in "
                                "bfloat16 (model.teacher.dtype=bfloat16)"):
            t_logp, _, t_h = score(teacher, mb, 1.0, chunk, vocab, g)
        c = costs_for(constraint.cost, s_logp, t_logp, s_h, t_h, student.get_output_embeddings().weight,
                      teacher.get_output_embeddings().weight, mb.completion_mask, chunk, vocab, temperature)
        parts.append((s_logp, t_logp, c, s_ent))
        if keep_teacher_hidden or constraint.cost == "token_kl":
            teacher_hidden.append(t_h)
    s_logp, t_logp, costs, entropy = (torch.cat(x) for x in zip(*parts, strict=True))
    mask = seq.completion_mask
    reward = torch.tensor([task.reward(t, p) for t, p in zip(rollout.texts, problems, strict=True)],
                          device=mask.device)
    stats = constraint_stats(costs, mask, constraint.threshold, constraint.kind)
    scored = Scored(mask=mask, task_reward=reward, old_logp=s_logp, teacher_logp=t_logp, costs=costs, stats=stats,
                    group_size=rollout.group_size,
                    teacher_hidden=torch.cat(teacher_hidden) if teacher_hidden else None,
                    sampler_logp=rollout.sampler_logp)
    extras = {"entropy": entropy, "sampled_kl": logratio_cost(s_logp, t_logp, mask)}
    return scored, extras
