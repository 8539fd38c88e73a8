"""Per-token costs c_t: the divergence from the teacher that the constraint budgets.

All return [B, T] float tensors, zero at masked positions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from cdistill.objectives.chunking import logits_from_hidden, positionwise
from cdistill.objectives.divergences import generalized_jsd
from cdistill.objectives.topk import topk_token_kl_cost


def logratio_cost(student_logp: torch.Tensor, teacher_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """c_t = log π_θ(y_t|s_t) − log π_T(y_t|s_t) on the sampled tokens.

    Its sum over a completion sampled from π_θ is an unbiased estimate of the sequence-level reverse
    KL(π_θ ‖ π_T). It depends on θ: callers that need its pathwise gradient pass ``student_logp`` with grad.
    """
    return (student_logp - teacher_logp) * mask


def teacher_nll_cost(teacher_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """c_t = −log π_T(y_t|s_t): how surprising the token is to the teacher; independent of θ."""
    return -teacher_logp * mask


def kl_rows(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Exact KL(p_s ‖ p_t) for each row of two [n, V] logit matrices."""
    return kl_from_logprobs(torch.log_softmax(student_logits.float(), dim=-1),
                            torch.log_softmax(teacher_logits.float(), dim=-1))


def kl_from_logprobs(student_logp: torch.Tensor, teacher_logp: torch.Tensor) -> torch.Tensor:
    """Exact KL(p_s ‖ p_t) for each row of two [n, V] log-prob matrices."""
    return (student_logp.exp() * (student_logp - teacher_logp)).sum(dim=-1)


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


def _logratio_tokens(student_logp, teacher_logp, mask, **_):
    return logratio_cost(student_logp, teacher_logp, mask)


def _teacher_nll_tokens(teacher_logp, mask, **_):
    return teacher_nll_cost(teacher_logp, mask)


def _token_kl_tokens(student_hidden, student_weight, teacher_hidden, teacher_weight, mask, spec, teacher_topk=None,
                     **_):
    if teacher_hidden is None and teacher_topk is not None:  # a served teacher: the top-k approximation
        return topk_token_kl_cost(student_hidden, student_weight, teacher_topk, mask, spec.chunk, spec.vocab,
                                  spec.temperature)
    return token_kl_cost(student_hidden, student_weight, teacher_hidden, teacher_weight, mask, spec.chunk,
                         spec.vocab, spec.temperature)


def _sampled(logp: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
    return logp.gather(1, token[:, None]).squeeze(1)


@dataclass(frozen=True)
class Cost:
    """One per-token cost c_t, in the two forms cdistill needs.

    ``per_token(student_logp=, teacher_logp=, mask=, student_hidden=, student_weight=, teacher_hidden=,
    teacher_weight=, spec=)`` gives [B, T] over scored completions (each cost reads the arguments it needs);
    ``at_step(student_logp, teacher_logp, token)`` gives [n] at one position from full [n, V] log-prob rows
    (the student's at the rollout temperature), for a sampler that tracks the budget token by token.
    """

    name: str
    per_token: Callable[..., torch.Tensor]
    at_step: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
    depends_on_student: bool  # c_t is a function of θ
    # its pathwise gradient ∇θ c_t (y fixed) is not zero in expectation: for logratio it is ∇θ log π_θ(y_t|s_t),
    # whose expectation over y_t given the prefix is zero (the score-function identity), so only token_kl has one
    pathwise: bool
    needs_hidden: bool  # needs both models' hidden states and output embeddings (the full distributions)
    # c_t depends on the sampled token y_t: a score-function estimator sees it (token_kl's c_t is a function of
    # the prefix alone, so −c_t as an advantage of y_t has no expected gradient)
    depends_on_token: bool


COSTS: dict[str, Cost] = {c.name: c for c in (
    Cost("logratio", _logratio_tokens, lambda s, t, y: _sampled(s - t, y), depends_on_student=True,
         pathwise=False, needs_hidden=False, depends_on_token=True),
    Cost("token_kl", _token_kl_tokens, lambda s, t, y: kl_from_logprobs(s, t), depends_on_student=True,
         pathwise=True, needs_hidden=True, depends_on_token=False),
    Cost("teacher_nll", _teacher_nll_tokens, lambda s, t, y: -_sampled(t, y), depends_on_student=False,
         pathwise=False, needs_hidden=False, depends_on_token=True),
)}
