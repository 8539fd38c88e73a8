"""What a method sees: one step's scored batch (``Scored``) and rows of it re-run through the student with
its gradient (``MicroBatch``)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from cdistill.objectives.chunking import ScoringSpec
from cdistill.objectives.constraints import ConstraintStats, joint_stats
from cdistill.objectives.costs import COSTS
from cdistill.objectives.topk import TopK


@dataclass
class Budget:
    """One more constraint of the batch (``constraints.<name>``): its teacher's log-probs, its costs and its
    statistics, as ``Scored`` holds them for the first one."""

    name: str
    teacher_logp: torch.Tensor  # [B, T] its teacher's (the same tensor for two constraints on one teacher)
    costs: torch.Tensor  # [B, T]
    stats: ConstraintStats


@dataclass
class Scored:
    """One step's rollouts, scored. All [B, T] tensors are detached and zero at masked positions."""

    mask: torch.Tensor  # [B, T] bool
    task_reward: torch.Tensor  # [B] verifier reward R(x, y) in {0, 1}
    old_logp: torch.Tensor  # [B, T] student log-probs at sampling time
    teacher_logp: torch.Tensor  # [B, T]
    costs: torch.Tensor  # [B, T] c_t under constraint.cost
    stats: ConstraintStats
    group_size: int
    teacher_hidden: torch.Tensor | None = None  # [B, T, H], kept only when the cost or the method needs it
    teacher_topk: TopK | None = None  # instead of them, a served teacher's top-k log-probs
    sampler_logp: torch.Tensor | None = None  # [B, T] the rollout engine's log-probs (vLLM), else None
    entropy: torch.Tensor | None = None  # [B, T] the student's entropy at each position (logged)
    sampled_kl: torch.Tensor | None = None  # [B, T] log π_θ − log π_T of each sampled token (logged)
    others: tuple[Budget, ...] = ()  # the constraints after the first (``constraints``), in config order

    def all_stats(self) -> list[ConstraintStats]:
        """Every constraint's statistics, the first one's first."""
        return [self.stats, *(o.stats for o in self.others)]

    def all_costs(self) -> list[torch.Tensor]:
        return [self.costs, *(o.costs for o in self.others)]

    @cached_property
    def joint(self) -> ConstraintStats:
        """All budgets as one absorbing constraint (``joint_stats``): ``stats`` itself when there is one. Derived
        once per batch (the method reads it for the advantages and again in every micro-batch's extra term)."""
        return joint_stats(self.all_stats(), self.mask)


@dataclass
class MicroBatch:
    """Rows of a ``Scored`` batch re-run through the student with its gradient: what a method's
    differentiable term (``Method.extra_loss``) reads."""

    rows: torch.Tensor  # indices of these rows in the scored batch
    logp: torch.Tensor  # [b, T] student log-probs (at the rollout temperature), with grad
    hidden: torch.Tensor | None  # [b, T, H] student final hidden states, with grad
    mask: torch.Tensor  # [b, T]
    teacher_logp: torch.Tensor  # [b, T]
    teacher_hidden: torch.Tensor | None  # [b, T, H] when the scoring kept them
    student_weight: torch.Tensor | None  # [V, H] the student's output embedding, with grad
    teacher_weight: torch.Tensor | None  # [V, H]
    spec: ScoringSpec
    teacher_topk: TopK | None = None  # [b, T, k] a served teacher's top-k log-probs, in place of its hidden states
    others_teacher_logp: tuple[torch.Tensor, ...] = ()  # [b, T] each further constraint's teacher's log-probs

    def cost(self, name: str) -> torch.Tensor:
        """c_t under the cost ``name``, differentiable in the student where it depends on it."""
        return COSTS[name].per_token(
            student_logp=self.logp, teacher_logp=self.teacher_logp, mask=self.mask, student_hidden=self.hidden,
            student_weight=self.student_weight, teacher_hidden=self.teacher_hidden,
            teacher_weight=self.teacher_weight, teacher_topk=self.teacher_topk, spec=self.spec)

    def all_costs(self, first: str, others: tuple[str, ...]) -> list[torch.Tensor]:
        """c_t of every constraint (the first under the cost ``first``, each further one under its cost in
        ``others``), differentiable in the student. Further constraints have sampled-token costs (logratio,
        teacher_nll: ``cdistill.config``), which read only log-probs."""
        return [self.cost(first), *(COSTS[name].per_token(student_logp=self.logp, teacher_logp=t, mask=self.mask)
                                    for name, t in zip(others, self.others_teacher_logp, strict=True))]
