"""Policy losses on token-level advantages."""

from __future__ import annotations

import torch

from cdistill.objectives.chunking import logits_from_hidden, positionwise


def token_mean(x: torch.Tensor, mask: torch.Tensor, denom: torch.Tensor | float | None = None) -> torch.Tensor:
    """Σ over generated tokens, divided by the number of generated tokens in the whole batch.

    Every token weighs the same whatever the length of its completion (DAPO's token-level mean), so long
    completions are not down-weighted as a per-sequence mean would do. When ``x`` is one micro-batch of a
    larger batch, pass the whole batch's token count as ``denom`` so that accumulated gradients equal the
    full-batch ones.
    """
    mf = mask.to(x.dtype)
    d = mf.sum().clamp(min=1) if denom is None else denom
    return (x * mf).sum() / d


def clipped_policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float | None = None,
    denom: torch.Tensor | float | None = None,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate, −min(ρ A, clip(ρ, 1−ε_low, 1+ε_high) A), as a token mean.

    ρ = exp(logp − old_logp). With one inner epoch old_logp equals logp's value, ρ = 1 and the gradient is
    exactly REINFORCE with the given (baselined) advantages. Advantages and old_logp are constants.
    ``weights`` ([B, T] constants, e.g. truncated importance weights for samples from another engine)
    multiply each token's term.
    """
    clip_high = clip_low if clip_high is None else clip_high
    adv = advantages.detach()
    log_ratio = logp - old_logp.detach()
    ratio = log_ratio.exp()
    unclipped = ratio * adv
    clipped = ratio.clamp(1.0 - clip_low, 1.0 + clip_high) * adv
    per_token = -torch.minimum(unclipped, clipped)
    if weights is not None:
        per_token = per_token * weights.detach()
    loss = token_mean(per_token, mask, denom)
    with torch.no_grad():
        stats = {
            "clip_frac": token_mean((clipped < unclipped).to(adv.dtype), mask),
            "approx_kl": token_mean(torch.expm1(-log_ratio) + log_ratio, mask),
        }
    return loss, stats


def expected_immediate_reward(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    cost_sum_before: torch.Tensor,
    position: torch.Tensor,
    absorbed_before: torch.Tensor,
    threshold: float,
    penalty: float,
    informative: float = 1.0,
    penalty_on: str = "first",
) -> torch.Tensor:
    """``weakest_link``'s exact single-step term Σ_a π_θ(a|s_t) R̂(s_t, a), one value per row.

    Rows are visited prefixes: logits [n, V]; ``cost_sum_before`` [n] is Σ_{i<t} c_i with the teacher-NLL
    cost c(a) = −log π_T(a|s_t); ``position`` [n] is t counted from 1; ``absorbed_before`` [n] says the
    prefix already broke the ``prefix_mean`` constraint. For every candidate token a:

    - prefix still within budget: R̂ = −penalty if (Σ_{i<t} c_i + c(a)) / t > d, else 0;
    - prefix already absorbed: R̂ = −informative · c(a) (a weight >= 0), and −penalty more with
      ``penalty_on="every"`` (a constant there: it adds nothing to the gradient, but keeps the term exact).

    The task reward is not in R̂: it depends on the whole completion and stays in the sampled part.
    Differentiable in ``student_logits``.
    """
    p = torch.softmax(student_logits.float(), dim=-1)
    cost = -torch.log_softmax(teacher_logits.float(), dim=-1).detach()
    prefix_mean = (cost_sum_before.unsqueeze(1) + cost) / position.unsqueeze(1).to(cost.dtype)
    fresh = -penalty * (prefix_mean > threshold).to(cost.dtype)
    absorbed = -float(informative) * cost if informative else torch.zeros_like(cost)
    if penalty_on == "every":
        absorbed = absorbed - penalty
    r_hat = torch.where(absorbed_before.bool().unsqueeze(1), absorbed, fresh)
    return (p * r_hat).sum(-1)


def weakest_link_exact_term(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    teacher_hidden: torch.Tensor,
    teacher_weight: torch.Tensor,
    costs: torch.Tensor,
    absorbed: torch.Tensor,
    mask: torch.Tensor,
    threshold: float,
    penalty: float,
    informative: float = 1.0,
    chunk: int = 1024,
    vocab_size: int | None = None,
    student_temperature: float = 1.0,
    penalty_on: str = "first",
) -> torch.Tensor:
    """``expected_immediate_reward`` at every visited prefix of a batch, [B, T], from hidden states.

    ``costs`` [B, T] are the sampled tokens' teacher-NLL costs and ``absorbed`` [B, T] the constraint's
    absorbed flags: the prefix before position t has Σ_{i<t} c_i and is absorbed when position t − 1 was.
    Chunked over positions (never a B × T × V tensor) and differentiable in the student only.
    """
    mf = mask.to(costs.dtype)
    cost_before = ((costs * mf).cumsum(1) - costs * mf).detach()
    position = mf.cumsum(1)
    absorbed_before = torch.cat([torch.zeros_like(absorbed[:, :1]), absorbed[:, :-1]], dim=1).to(costs.dtype)

    def fn(hs, ht, before, pos, gone):
        return expected_immediate_reward(
            logits_from_hidden(hs, student_weight, vocab_size, student_temperature),
            logits_from_hidden(ht, teacher_weight, vocab_size),
            before, pos, gone, threshold, penalty, informative, penalty_on,
        )

    return positionwise(fn, mask, [student_hidden, teacher_hidden, cost_before, position, absorbed_before], chunk)
