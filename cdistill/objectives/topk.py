"""Divergences from a teacher known only at its top k tokens (a served teacher returns the log-probs of its k most
likely tokens at each position, not its whole distribution).

Both distributions are coarsened to the same k + 1 classes: the teacher's top k tokens, and one class for every
other token (its mass is 1 minus the top k's). KL and the generalised JSD of the coarsened pair are computed
exactly. Merging outcomes never increases an f-divergence (the data-processing inequality), so the approximation
is a lower bound on the exact value, equal to it when the student and teacher agree on how the rest of the mass
is spread (and at k = V). ``scripts/topk_bias.py`` measures the gap on the embedded pair.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from cdistill.objectives.chunking import logits_from_hidden, positionwise
from cdistill.objectives.divergences import generalized_jsd

# a class with no mass gets this log-prob instead of -inf: 0 · (-inf) would turn the sum (and its gradient) into nan
LOG_ZERO = -1.0e4
REST_FLOOR = 1.0e-5  # the least mass the teacher's rest class is given (see ``coarsened``)


class TopK(NamedTuple):
    """The teacher's k most likely tokens at each position and their log-probs (at temperature 1)."""

    ids: torch.Tensor  # [B, T, k] long
    logp: torch.Tensor  # [B, T, k] float

    def select(self, rows) -> TopK:
        return TopK(self.ids[rows], self.logp[rows])


def coarsened(student_logp: torch.Tensor, ids: torch.Tensor, teacher_logp: torch.Tensor):
    """([n, k+1], [n, k+1]) log-probs of the student ([n, V] rows) and the teacher ([n, k] at ``ids``) on the
    classes {each of the teacher's top k tokens, every other token}. Differentiable in ``student_logp``.

    A top-k id at or beyond V (a padded row of the teacher's head, which a server scores too) is a class the
    student never produces: its student log-prob is LOG_ZERO."""
    v = student_logp.shape[1]
    # one column more, LOG_ZERO, stands for every id >= V
    padded = torch.cat([student_logp, student_logp.new_full((student_logp.shape[0], 1), LOG_ZERO)], 1)
    ids = ids.clamp(max=v)
    s_top = padded.gather(1, ids)
    # the top k filled with LOG_ZERO, not -inf: at k = V the rest is empty, and logsumexp over all -inf has a nan
    # gradient
    s_rest = torch.logsumexp(padded.scatter(1, ids, LOG_ZERO)[:, :v], dim=1, keepdim=True)
    t = teacher_logp.float()
    # 1 − (the top k's mass) from float32 log-probs is off by ~1e-6 (more when a server's rounding puts the mass a hair
    # above 1): a smaller rest is not known, and under-stating it would over-state the KL where the student puts
    # mass there (scripts/topk_bias.py counted hundreds of positions above the exact value at k = 100 without it)
    t_rest = torch.log((1.0 - t.exp().sum(1, keepdim=True)).clamp(min=REST_FLOOR))
    return torch.cat([s_top, s_rest], 1), torch.cat([t, t_rest], 1)


def _student_rows(hs, weight, vocab_size, temperature):
    return torch.log_softmax(logits_from_hidden(hs, weight, vocab_size, temperature), dim=-1)


def topk_token_kl_cost(student_hidden: torch.Tensor, student_weight: torch.Tensor, teacher: TopK, mask: torch.Tensor,
                       chunk: int = 1024, vocab_size: int | None = None,
                       student_temperature: float = 1.0) -> torch.Tensor:
    """[B, T] KL(π_θ ‖ π_T) at each visited position on the coarsened classes (a lower bound on ``token_kl``)."""

    def fn(hs, ids, lt):
        s, t = coarsened(_student_rows(hs, student_weight, vocab_size, student_temperature), ids, lt.detach())
        return (s.exp() * (s - t)).sum(-1)

    return positionwise(fn, mask, [student_hidden, teacher.ids, teacher.logp], chunk)


def topk_token_jsd_cost(student_hidden: torch.Tensor, student_weight: torch.Tensor, teacher: TopK, mask: torch.Tensor,
                        beta: float, chunk: int = 1024, vocab_size: int | None = None,
                        student_temperature: float = 1.0) -> torch.Tensor:
    """[B, T] GKD's generalised JSD(β) at each visited position on the coarsened classes (a lower bound)."""

    def fn(hs, ids, lt):
        s, t = coarsened(_student_rows(hs, student_weight, vocab_size, student_temperature), ids, lt.detach())
        return generalized_jsd(s, t, beta)

    return positionwise(fn, mask, [student_hidden, teacher.ids, teacher.logp], chunk)
