"""Methods, registered by the name that ``method=<name>`` selects."""

from cdistill.methods.base import Method, Scored
from cdistill.methods.cmdp import CMDP
from cdistill.methods.grpo import GRPO
from cdistill.methods.lagrangian import Lagrangian
from cdistill.methods.soft_penalty import SoftPenalty

METHODS: dict[str, type[Method]] = {m.name: m for m in (CMDP, SoftPenalty, Lagrangian, GRPO)}


def build_method(cfg, constraint, optim) -> Method:
    if cfg.name not in METHODS:
        raise ValueError(f"unknown method {cfg.name!r}; available: {', '.join(sorted(METHODS))}")
    return METHODS[cfg.name](cfg, constraint, optim)


__all__ = ["METHODS", "Method", "Scored", "build_method"]
