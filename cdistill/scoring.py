"""Scoring rollouts: task reward, student and teacher log-probs, costs and constraint statistics.

Training and evaluation both call ``score_rollout``, so the satisfaction rate reported by ``cdistill
eval`` is computed by exactly the code that shaped the training reward.
"""

from __future__ import annotations

import torch

from cdistill.methods.base import Scored
from cdistill.models import score
from cdistill.objectives import constraint_stats, logratio_cost, teacher_nll_cost, token_kl_cost
from cdistill.rollout import Rollout


def costs_for(name: str, s_logp, t_logp, s_hidden, t_hidden, s_weight, t_weight, mask, chunk, vocab, temperature):
    """Per-token costs [B, T]; differentiable in the student's log-probs / hidden states / weight if they are."""
    if name == "logratio":
        return logratio_cost(s_logp, t_logp, mask)
    if name == "teacher_nll":
        return teacher_nll_cost(t_logp, mask)
    if name == "token_kl":
        return token_kl_cost(s_hidden, s_weight, t_hidden, t_weight, mask, chunk, vocab, temperature)
    raise ValueError(f"unknown constraint.cost {name!r}; expected logratio, token_kl or teacher_nll")


@torch.inference_mode()
def score_rollout(rollout: Rollout, problems, task, student, teacher, constraint, temperature: float,
                  chunk: int, vocab: int, micro_batch: int) -> tuple[Scored, dict[str, torch.Tensor]]:
    """Score every completion of ``rollout`` (``problems`` holds one entry per completion)."""
    seq = rollout.seq
    parts, teacher_hidden = [], []
    for start in range(0, seq.input_ids.shape[0], micro_batch):
        mb = seq.select(slice(start, start + micro_batch))
        s_logp, s_ent, s_h = score(student, mb, temperature, chunk, vocab)
        t_logp, _, t_h = score(teacher, mb, 1.0, chunk, vocab)
        c = costs_for(constraint.cost, s_logp, t_logp, s_h, t_h, student.get_output_embeddings().weight,
                      teacher.get_output_embeddings().weight, mb.completion_mask, chunk, vocab, temperature)
        parts.append((s_logp, t_logp, c, s_ent))
        if constraint.cost == "token_kl":  # [B, T, H]: kept only for the cost whose direct gradient needs them
            teacher_hidden.append(t_h)
    s_logp, t_logp, costs, entropy = (torch.cat(x) for x in zip(*parts, strict=True))
    mask = seq.completion_mask
    reward = torch.tensor([task.reward(t, p) for t, p in zip(rollout.texts, problems, strict=True)],
                          device=mask.device)
    stats = constraint_stats(costs, mask, constraint.threshold, constraint.kind)
    scored = Scored(mask=mask, task_reward=reward, old_logp=s_logp, teacher_logp=t_logp, costs=costs, stats=stats,
                    group_size=rollout.group_size,
                    teacher_hidden=torch.cat(teacher_hidden) if teacher_hidden else None)
    extras = {"entropy": entropy, "sampled_kl": logratio_cost(s_logp, t_logp, mask)}
    return scored, extras
