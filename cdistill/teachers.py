"""A run's teachers and their budgets, read from its config.

The first constraint (``constraint``) is on ``model.teacher`` and is named ``teacher``. Each entry of
``constraints`` is one more budget: ``constraints.<name>: {teacher, cost, kind, threshold}``, its teacher
named by ``teacher`` (``teacher`` itself, or a key of ``model.teachers``). A further teacher is configured as
``model.teacher`` is; what it leaves out it takes from ``model.teacher`` (dtype, quantization, sharding, how a server
is reached: api, key, timeout, retries, concurrency), except where it is: it runs in process unless its own
``backend=server`` with its own ``server.base_url``. An embedded one may change the embedded teacher's recipe under
``embedded`` (``model.teachers.correct.embedded: {flaw: null, tokenizer: {vocab_size: 400}}``).

Named mappings, not a list: a Hydra override addresses an entry by its name (``constraints.correct.threshold=4``),
and a run with one constraint keeps today's config unchanged.
"""

from __future__ import annotations

FIRST = "teacher"  # the name of the first constraint, and of model.teacher
# sampled-token costs: what a further constraint may use (its teacher's full distribution is not kept; the
# first constraint's token_kl is the one that reads it)
SAMPLED_COSTS = ("logratio", "teacher_nll")


def other_constraints(cfg) -> list[tuple[str, object]]:
    """``(name, config)`` of every constraint after the first, in config order."""
    return list((cfg.get("constraints") or {}).items())


def constraint_names(cfg) -> list[str]:
    return [FIRST, *(name for name, _ in other_constraints(cfg))]


def other_teachers(cfg) -> list[str]:
    """The further teachers the constraints name (``model.teachers`` keys), each once, in order of first use."""
    names = []
    for _, c in other_constraints(cfg):
        if c.teacher != FIRST and c.teacher not in names:
            names.append(c.teacher)
    return names


def teacher_config(cfg, name: str):
    """``model.teacher`` (``name="teacher"``) or ``model.teachers.<name>`` over ``model.teacher``'s settings
    (name_or_path, gguf_file and the embedded recipe's changes are its own)."""
    from omegaconf import OmegaConf

    if name == FIRST:
        return cfg.model.teacher
    base = OmegaConf.to_container(cfg.model.teacher, resolve=True)
    # where it is and what it is are its own: in process unless it says otherwise, and a server of its own
    for own in ("name_or_path", "gguf_file", "backend"):
        base.pop(own, None)
    base["backend"] = "local"
    if "server" in base:  # only the sampled tokens' log-probs are read of a further teacher
        for own in ("base_url", "model"):
            base["server"].pop(own, None)
        base["server"]["top_k"] = 0
        base["server"]["model"] = None
    return OmegaConf.merge(OmegaConf.create(base), cfg.model.teachers[name])


def describe(cfg) -> dict[str, dict]:
    """``{name: {teacher, cost, kind, threshold}}`` of every constraint, the first one's first: what a report
    names each number by."""
    first = cfg.constraint
    out = {FIRST: {"teacher": FIRST, "cost": first.cost, "kind": first.kind, "threshold": first.threshold}}
    for name, c in other_constraints(cfg):
        out[name] = {"teacher": c.teacher, "cost": c.cost, "kind": c.kind, "threshold": c.threshold}
    return out
