"""Per-token costs c_t: the divergence from the teacher that the constraint budgets.

All return [B, T] float tensors, zero at masked positions.
"""

from __future__ import annotations

import torch

from cdistill.objectives.chunking import logits_from_hidden, positionwise
from cdistill.objectives.divergences import generalized_jsd


def logratio_cost(student_logp: torch.Tensor, teacher_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """c_t = log π_θ(y_t|s_t) − log π_T(y_t|s_t) on the sampled tokens.

    Its sum over a completion sampled from π_θ is an unbiased estimate of the sequence-level reverse
    KL(π_θ ‖ π_T). It depends on θ: callers that need its direct gradient pass ``student_logp`` with grad.
    """
    return (student_logp - teacher_logp) * mask


def teacher_nll_cost(teacher_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """c_t = −log π_T(y_t|s_t): how surprising the token is to the teacher; independent of θ."""
    return -teacher_logp * mask


def kl_rows(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Exact KL(p_s ‖ p_t) for each row of two [n, V] logit matrices."""
    ls = torch.log_softmax(student_logits.float(), dim=-1)
    lt = torch.log_softmax(teacher_logits.float(), dim=-1)
    return (ls.exp() * (ls - lt)).sum(dim=-1)


def token_kl_cost(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    teacher_hidden: torch.Tensor,
    teacher_weight: torch.Tensor,
    mask: torch.Tensor,
    chunk: int = 1024,
    vocab_size: int | None = None,
    student_temperature: float = 1.0,
) -> torch.Tensor:
    """c_t = Σ_a π_θ(a|s_t) (log π_θ(a|s_t) − log π_T(a|s_t)), exact at each visited position.

    Computed from final hidden states [B, T, H] and ``lm_head`` weights [V, H] in chunks of positions;
    differentiable in the student's hidden states and weight (checkpointed per chunk).
    """

    def fn(hs: torch.Tensor, ht: torch.Tensor) -> torch.Tensor:
        return kl_rows(
            logits_from_hidden(hs, student_weight, vocab_size, student_temperature),
            logits_from_hidden(ht, teacher_weight, vocab_size).detach(),  # the teacher is a fixed target
        )

    return positionwise(fn, mask, [student_hidden, teacher_hidden], chunk)


def token_jsd_cost(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    teacher_hidden: torch.Tensor,
    teacher_weight: torch.Tensor,
    mask: torch.Tensor,
    beta: float,
    chunk: int = 1024,
    vocab_size: int | None = None,
    student_temperature: float = 1.0,
) -> torch.Tensor:
    """GKD's generalised JSD(β) between teacher and student at each visited position, [B, T], chunked.

    β = 0 is the forward KL(π_T ‖ π_θ), β = 1 the reverse KL(π_θ ‖ π_T) (see ``generalized_jsd``).
    Differentiable in the student's hidden states and weight only.
    """

    def fn(hs: torch.Tensor, ht: torch.Tensor) -> torch.Tensor:
        return generalized_jsd(
            logits_from_hidden(hs, student_weight, vocab_size, student_temperature),
            logits_from_hidden(ht, teacher_weight, vocab_size).detach(),
            beta,
        )

    return positionwise(fn, mask, [student_hidden, teacher_hidden], chunk)


# Names accepted by ``constraint.cost``. token_kl needs hidden states, so callers dispatch on the name.
COSTS = ("logratio", "token_kl", "teacher_nll")
