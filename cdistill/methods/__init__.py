"""Methods, registered by the name that ``method=<name>`` selects."""

from cdistill.methods.base import Method
from cdistill.methods.cmdp import CMDP
from cdistill.methods.gkd import GKD
from cdistill.methods.grpo import GRPO
from cdistill.methods.lagrangian import Lagrangian
from cdistill.methods.opd import OPD
from cdistill.methods.saute import Saute
from cdistill.methods.seqkd import SeqKD
from cdistill.methods.sft import SFT
from cdistill.methods.soft_penalty import SoftPenalty
from cdistill.methods.weakest_link import WeakestLink

METHODS: dict[str, type[Method]] = {
    m.name: m for m in (CMDP, WeakestLink, Saute, Lagrangian, SoftPenalty, GRPO, OPD, GKD, SFT, SeqKD)
}


def build_method(cfg, constraint, optim, reduce_mean=None, seed: int = 0, others=()) -> Method:
    """The method ``cfg.name`` with its options; ``reduce_mean`` averages a number over every process,
    ``seed`` is the run's (the same on every rank); ``others``: the constraints after ``constraint``, as
    ``(name, config)`` pairs (``cdistill.teachers.other_constraints``)."""
    if cfg.name not in METHODS:
        raise ValueError(f"unknown method {cfg.name!r}; available: {', '.join(sorted(METHODS))}")
    kind = METHODS[cfg.name]
    if others and not kind.follows_several_budgets:
        raise ValueError(kind.several_budgets_refusal)
    return kind(cfg, constraint, optim, reduce_mean=reduce_mean, seed=seed, others=others)


__all__ = ["METHODS", "Method", "build_method"]
