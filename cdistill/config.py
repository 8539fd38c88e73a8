"""Checks on a composed config that fail fast, before minutes of model building, with one clear line."""

from __future__ import annotations

from omegaconf import OmegaConf

from cdistill import schema
from cdistill.methods import build_method
from cdistill.schema import ConfigError
from cdistill.teachers import FIRST, SAMPLED_COSTS, other_constraints, other_teachers


def validate(cfg, command: str = "train") -> None:
    """Refuse a config that cannot run, in one line: every value against its entry in ``cdistill.schema``, then
    what relates several values. ``command="eval"`` checks a run's recorded config (with the eval command's
    overrides), leaving out what evaluating a trained student does not use: the base model paths (it loads the
    run's student/) and the rollout engine; keys that a newer cdistill no longer has are tolerated there."""
    schema.check(cfg, "train", unknown=command == "train")
    _device(cfg.device)
    d = cfg.task.get("difficulty")
    if d is not None and d.min_steps > d.max_steps:
        raise ConfigError(f"task.difficulty.min_steps={d.min_steps} is above task.difficulty.max_steps={d.max_steps}")
    for role in ("teacher", "student"):
        size = cfg.model.get("embedded", {}).get(role, {}).get("size")
        if size is not None and size.hidden % size.heads:
            raise ConfigError(f"model.embedded.{role}.size.hidden={size.hidden} is not a multiple of its "
                              f"heads={size.heads}")
    # an embedded model's context is known before it is built (minutes, the first time); the longest prompt only
    # once the task is tokenised, where cdistill.models.loading.check_context reads every model's
    for role in ("student", "teacher"):
        size = cfg.model.get("embedded", {}).get(role, {}).get("size")
        n = cfg.rollout.max_new_tokens
        if cfg.model[role].name_or_path == f"embedded:{role}" and size is not None and n >= size.max_positions:
            raise ConfigError(f"rollout.max_new_tokens={n} does not fit model.embedded.{role}.size.max_positions="
                              f"{size.max_positions} with any prompt")
    flaw = cfg.model.get("embedded", {}).get("teacher", {}).get("flaw")
    if flaw is not None:  # checked again where the teacher is built; here before minutes of other set-up
        from cdistill.models.embedded import check_flaw

        try:
            check_flaw(flaw, cfg.task, "teacher")
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if cfg.model.teacher.name_or_path != "embedded:teacher":
            raise ConfigError(f"model.embedded.teacher.flaw={flaw} is taught to the embedded teacher, but the teacher "
                              f"is {cfg.model.teacher.name_or_path}: set the flaw to null or the teacher to "
                              "embedded:teacher")
    if cfg.eval.get("split", "test") == "validation":  # before a whole run trains to find out at its evaluation
        embedded = cfg.task.get("source") == "embedded"
        size = cfg.task.get("validation_fraction", 0) if embedded else cfg.task.get("n_validation", 0)
        if not size:
            what = "task.validation_fraction" if embedded else "task.n_validation"
            raise ConfigError(f"eval.split=validation, but task {cfg.task.name!r} has no validation split: set "
                              f"{what} above 0")
    _several_budgets(cfg)
    try:  # each method checks its own options (and weakest_link its constraint), and refuses budgets it cannot hold
        method = build_method(cfg.method, cfg.constraint, cfg.optim, others=other_constraints(cfg))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if method.group_relative and cfg.optim.adv_baseline == "group" and cfg.rollout.samples_per_prompt < 2:
        raise ConfigError(f"rollout.samples_per_prompt={cfg.rollout.samples_per_prompt} with {method.name}: each "
                          "completion is its group's own baseline, so its task reward cancels out of every advantage "
                          "and is never learned from; use at least 2 (or optim.adv_baseline=none)")
    _served_teacher(cfg, method)
    _own_tokenizer(cfg)
    if command == "eval":
        return
    _rollout_backend(cfg.rollout, method)
    for role in ("student", "teacher"):
        served = role == "teacher" and cfg.model.teacher.get("backend", "local") == "server"
        _model_address(cfg.model[role].name_or_path, f"model.{role}.name_or_path", cfg.model[role].get("gguf_file"),
                       tokenizer_only=served)
    for name in other_teachers(cfg):
        t = cfg.model.teachers[name]
        _model_address(t.name_or_path, f"model.teachers.{name}.name_or_path", t.get("gguf_file"),
                       tokenizer_only=t.get("backend", cfg.model.teacher.get("backend", "local")) == "server")
    _cache(cfg.paths.cache)
    q = cfg.model.teacher.get("quantization")
    if q:
        from cdistill.models.loading import ModelError, quantization_config

        try:
            quantization_config(q, None)
        except ModelError as e:
            raise ConfigError(f"model.teacher.quantization: {e}") from None


def _several_budgets(cfg) -> None:
    """Every further constraint complete and on a teacher that exists, with a cost that needs only the sampled
    tokens' log-probs; every further teacher named by some constraint and given its address."""
    teachers = dict(cfg.model.get("teachers") or {})
    for where, entries in (("constraints", dict(cfg.get("constraints") or {})), ("model.teachers", teachers)):
        for name, entry in entries.items():
            if not OmegaConf.is_dict(entry):
                raise ConfigError(f"{where}.{name} must be a mapping of settings, got {entry}")
    penalties = cfg.method.get("penalties")
    if penalties and cfg.method.name != "soft_penalty":
        raise ConfigError(f"method.penalties is soft_penalty's (a weight per budget); method {cfg.method.name} has no "
                          "use for it")
    for name, c in other_constraints(cfg):
        key = f"constraints.{name}"
        if name == FIRST:
            raise ConfigError(f"{key}: the name {FIRST!r} is the first constraint's (constraint.*); give this one "
                              "another name")
        for field, what in (("teacher", f"{FIRST} or a key of model.teachers"), ("cost", " | ".join(SAMPLED_COSTS)),
                            ("kind", "sum | mean | prefix_mean"), ("threshold", "its budget d > 0")):
            if c.get(field) is None:
                raise ConfigError(f"{key}.{field} is required ({what})")
        if c.teacher != FIRST and c.teacher not in teachers:
            known = ", ".join([FIRST, *teachers])
            raise ConfigError(f"{key}.teacher={c.teacher} names no teacher (the teachers: {known}; add "
                              f"model.teachers.{c.teacher}.name_or_path=...)")
        if c.cost not in SAMPLED_COSTS:
            raise ConfigError(f"{key}.cost={c.cost}: a further constraint's cost reads only the sampled tokens' "
                              f"log-probs ({' | '.join(SAMPLED_COSTS)}); token_kl is the first constraint's "
                              "(constraint.cost) alone")
    named = set(other_teachers(cfg))
    for name, t in teachers.items():
        if name not in named:
            raise ConfigError(f"model.teachers.{name} is named by no constraint (constraints.<name>.teacher="
                              f"{name}): remove it, or give it a budget")
        if t.get("name_or_path") is None:
            raise ConfigError(f"model.teachers.{name}.name_or_path is required (a Hugging Face id, a local path or "
                              "embedded:teacher)")
        if t.get("backend", "local") == "server" and not (t.get("server") or {}).get("base_url"):
            raise ConfigError(f"model.teachers.{name}.backend=server needs its own server: set "
                              f"model.teachers.{name}.server.base_url")
        if t.get("embedded") and t.name_or_path != "embedded:teacher":
            raise ConfigError(f"model.teachers.{name}.embedded changes the embedded teacher's recipe, but the "
                              f"teacher is {t.name_or_path}: set its name_or_path to embedded:teacher or drop embedded")


def _model_address(name, key: str, gguf_file: str | None = None, tokenizer_only: bool = False) -> None:
    """A local path that does not exist or holds no model, said as such before any model is loaded (transformers
    would call the first a malformed hub id, and the second fails on its tokenizer, after the other model has
    loaded). Hub ids are ``name`` or ``org/name``; anything absolute, relative (``./``, ``../``, ``~``) or deeper
    is a path, and so is an existing directory. ``tokenizer_only``: a served teacher's, which gives only the
    tokenizer."""
    from pathlib import Path

    if name.split(":")[0] in ("embedded", "package", "truncated"):
        return
    path = Path(name).expanduser()
    local = name.startswith(("/", "./", "../", "~")) or name.count("/") > 1 or path.is_dir()
    if not local:
        return
    if not path.exists():
        raise ConfigError(f"{key}: no such model directory {name}")
    if not path.is_dir():
        raise ConfigError(f"{key}: {name} is a file; give the directory that holds the model")
    if gguf_file:
        if not (path / gguf_file).is_file():
            raise ConfigError(f"{key}: {name} holds no {gguf_file} (model.*.gguf_file)")
    elif tokenizer_only:
        if not any((path / f).is_file() for f in ("tokenizer_config.json", "tokenizer.json", "config.json")):
            raise ConfigError(f"{key}: {name} holds no tokenizer (no tokenizer_config.json)")
    elif not any((path / f).is_file() for f in ("config.json", "adapter_config.json")):
        raise ConfigError(f"{key}: {name} holds no model (no config.json)")


def _cache(cache) -> None:
    """``paths.cache`` must be a directory this run can make and write (embedded builds, teacher solutions), known
    before minutes of set-up. Probed with a directory made and removed in it, or in the nearest existing one above:
    permissions alone do not say whether /proc/x can be made."""
    import os
    from pathlib import Path

    path = Path(cache).expanduser().absolute()
    existing = next(p for p in [path, *path.parents] if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"paths.cache: cannot create {cache}: {existing} is a file")
    probe = existing / f".cdistill-probe-{os.getpid()}"
    try:
        probe.mkdir()
        probe.rmdir()
    except OSError as e:
        doing = f"write in {cache}" if existing == path else f"create {cache}"
        raise ConfigError(f"paths.cache: cannot {doing} ({e.strerror or e})") from None


def _device(device) -> None:
    """The schema has checked the spelling; whether this machine has what it names is checked here."""
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(f"device={device} but no CUDA device is available here; use device=auto or device=cpu")
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ConfigError(f"device={device} but this machine has {torch.cuda.device_count()} CUDA device(s)")


def _rollout_backend(r, method) -> None:
    from cdistill.rollout import engines

    if r.backend != "vllm":
        return
    if method.conditions_on_budget:
        raise ConfigError(f"method {method.name} samples token by token with the teacher tracking the budget; "
                          "vLLM cannot: use rollout.backend=hf")
    if not engines.vllm_available():
        raise ConfigError("rollout.backend=vllm needs vLLM, which is not installed: pip install 'cdistill[vllm]' "
                          "(Linux, CUDA GPU)")


def _served_teacher(cfg, method) -> None:
    """What a teacher behind a server cannot give: its hidden states, its full distribution (only the top
    ``server.top_k``), a token-by-token view beside the student's sampling."""
    if cfg.model.teacher.get("backend", "local") != "server":
        return
    if method.conditions_on_budget:
        raise ConfigError(f"method {method.name} runs the teacher beside the student at every sampled token; a served "
                          "teacher cannot: use model.teacher.backend=local")
    if method.name == "weakest_link":  # its sampled return leaves the immediate term to the exact one: no subset
        raise ConfigError("weakest_link's exact term reads the teacher's NLL of every candidate token at every "
                          "position, which a served teacher does not return: use model.teacher.backend=local")
    full = [what for what, needed in (
        ("constraint.cost=token_kl", cfg.constraint.cost == "token_kl"),
        ("opd's full estimator", method.name == "opd" and cfg.method.get("estimator") == "full"),
        ("gkd's JSD", method.name == "gkd")) if needed]
    if full and not cfg.model.teacher.server.top_k:
        raise ConfigError(f"{full[0]} needs the teacher's distribution at every position, and a served teacher "
                          "returns only the sampled token's log-prob unless asked for its top k: set "
                          "model.teacher.server.top_k (e.g. 20; a lower bound on the divergence, docs/methods.md) or "
                          "model.teacher.backend=local")


def _own_tokenizer(cfg) -> None:
    """An embedded teacher with its own tokenizer is known here, before minutes of building; any other teacher's
    tokenizer is compared with the student's when both are loaded (``loading.cross_tokenizer_check``)."""
    own = cfg.model.get("embedded", {}).get("teacher", {}).get("tokenizer")
    if own is None or cfg.model.teacher.name_or_path != "embedded:teacher" or \
            own.vocab_size == cfg.model.embedded.tokenizer.vocab_size:
        return
    from cdistill.models.cross_tokenizer import refusal

    why = refusal(cfg)
    if why:
        raise ConfigError(why)


def validate_launch(cfg, method, sharded: bool) -> None:
    """What a launch with the student sharded (FSDP2) cannot run."""
    if not sharded:
        return
    if cfg.model.student.get("lora") or method.conditions_on_budget:
        raise ConfigError("under FSDP the student is trained whole and sampled with generate(): a LoRA student "
                          "(small enough to replicate) or saute's token loop runs with DDP instead")
    if method.uses_cached_teacher_solutions and cfg.model.teacher.get("shard", True) and \
            cfg.model.teacher.get("backend", "local") == "local":
        raise ConfigError("seqkd generates each rank's missing teacher solutions once, a different number of calls "
                          "per rank, which a sharded teacher cannot serve; set model.teacher.shard=false")
