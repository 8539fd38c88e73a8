"""What every setting may hold: one table per command, checked before anything is built.

Each key of a composed config (``conf/`` with any choice of method, model, task and exp) has an entry here, and
``check`` refuses, in one line that names the key, a value of the wrong type or outside its range. A key that
no entry covers is refused under ``train`` (``+optim.lrr=1`` is a typo, not a setting) and
``tests/test_bad_values.py`` fails for a key added to ``conf/`` without an entry, so the table cannot fall behind.
Checks that relate several keys (a group-normalised method with one sample per prompt) stay in
``cdistill.config``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cdistill.methods import METHODS
from cdistill.models.served import APIS
from cdistill.objectives import COSTS, KINDS
from cdistill.objectives.advantages import BASELINES, SCALES
from cdistill.objectives.importance import LEVELS
from cdistill.objectives.rewards import PENALTY_ON
from cdistill.rollout.engines import BACKENDS
from cdistill.selection import METRICS
from cdistill.tasks.arith import FLAWS
from cdistill.tasks.base import SPLITS


class ConfigError(ValueError):
    pass


def _shown(value) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def _choice(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


@dataclass(frozen=True)
class Flag:
    def problem(self, key, v):
        return None if isinstance(v, bool) else f"{key} must be true or false, got {_shown(v)}"

    def describe(self) -> str:
        return "true | false"


@dataclass(frozen=True)
class Whole:
    lo: int | None = None
    hi: int | None = None

    def problem(self, key, v):
        if isinstance(v, bool) or not isinstance(v, int) or (self.lo is not None and v < self.lo) or (
                self.hi is not None and v > self.hi):
            bounds = [] if self.lo is None else ["of at least 1" if self.lo == 1 else f">= {self.lo}"]
            bounds += [] if self.hi is None else [f"<= {self.hi}"]
            return f"{key} must be {' and '.join(['a whole number', *bounds]).replace('number and', 'number')}, " \
                   f"got {_shown(v)}"
        return None

    def describe(self) -> str:
        bounds = [] if self.lo is None else [f">= {self.lo}"]
        return " and ".join(["whole number", *bounds, *([] if self.hi is None else [f"<= {self.hi}"])]).replace(
            "number and", "number")


@dataclass(frozen=True)
class Real:
    """A finite number; ``lo``/``hi`` bound it, excluded when ``open_lo``/``open_hi`` (0 < temperature)."""

    lo: float | None = None
    hi: float | None = None
    open_lo: bool = False
    open_hi: bool = False
    unbounded: bool = False  # +inf allowed: a limit that is off (optim.grad_clip=inf clips nothing)

    def problem(self, key, v):
        if isinstance(v, bool) or not isinstance(v, int | float):
            return f"{key} must be a number, got {_shown(v)}"
        if not (math.isfinite(v) or (self.unbounded and v == math.inf)):  # NaN would pass every range check
            return f"{key} must be a finite number{' or inf' if self.unbounded else ''}, got {v}"
        low = self.lo is not None and (v <= self.lo if self.open_lo else v < self.lo)
        high = self.hi is not None and (v >= self.hi if self.open_hi else v > self.hi)
        return f"{key} must be {self.range()}, got {v}" if low or high else None

    def describe(self) -> str:
        shown = "positive number" if self.range() == "positive" else f"number {self.range()}"
        return shown + (" or inf" if self.unbounded else "")

    def range(self) -> str:
        if self.lo is None:
            return f"{'<' if self.open_hi else '<='} {self.hi:g}"
        if self.hi is None:
            return "positive" if self.lo == 0 and self.open_lo else f"{'>' if self.open_lo else '>='} {self.lo:g}"
        return f"in {'(' if self.open_lo else '['}{self.lo:g}, {self.hi:g}{')' if self.open_hi else ']'}"


@dataclass(frozen=True)
class Weight:
    """A weight >= 0 that was once a switch: true / false (configs written before it was a number) read as 1 / 0."""

    def problem(self, key, v):
        return None if isinstance(v, bool) else NONNEGATIVE.problem(key, v)

    def describe(self) -> str:
        return "number >= 0 (true = 1, false = 0)"


@dataclass(frozen=True)
class OneOf:
    choices: tuple

    def problem(self, key, v):
        if any(v == c and type(v) is type(c) for c in self.choices):
            return None
        return f"unknown {key} {_shown(v)}; expected one of {', '.join(_choice(c) for c in self.choices)}"

    def describe(self) -> str:
        return " | ".join(_choice(c) for c in self.choices)


@dataclass(frozen=True)
class Text:
    """A non-empty string; ``holds`` names placeholders it must contain (a prompt template's ``{question}``)."""

    holds: tuple = ()

    def problem(self, key, v):
        if not isinstance(v, str) or not v:
            return f"{key} must be a non-empty text, got {_shown(v)}"
        missing = [h for h in self.holds if h not in v]
        return f"{key} must contain {', '.join(missing)}" if missing else None

    def describe(self) -> str:
        return "text" + (f" containing {', '.join(self.holds)}" if self.holds else "")


@dataclass(frozen=True)
class Maybe:
    """``null`` or ``spec``."""

    spec: object

    def problem(self, key, v):
        return None if v is None else self.spec.problem(key, v)

    def describe(self) -> str:
        return f"{self.spec.describe()} | null"


@dataclass(frozen=True)
class Seq:
    item: object
    length: int | None = None

    def problem(self, key, v):
        if not isinstance(v, list | tuple) or (self.length is not None and len(v) != self.length):
            return f"{key} must be a list of {self.length or 'some'} values, got {_shown(v)}"
        return next((p for i, x in enumerate(v) if (p := self.item.problem(f"{key}[{i}]", x))), None)

    def describe(self) -> str:
        return f"list of {self.length or ''} ({self.item.describe()})".replace("of  (", "of (")


@dataclass(frozen=True)
class Section:
    """A group of settings given whole (``model.student.lora={r: 16, alpha: 32}``): its keys have entries of
    their own."""

    def problem(self, key, v):
        return None if isinstance(v, dict) else f"{key} must be a mapping of settings, got {_shown(v)}"

    def describe(self) -> str:
        return "mapping of the settings below"


@dataclass(frozen=True)
class Device:
    def problem(self, key, v):
        ok = isinstance(v, str) and (v in ("auto", "cpu") or v == "cuda" or (
            v.startswith("cuda:") and v[5:].isdigit()))
        return None if ok else f"{key} must be auto, cpu or cuda[:N], got {_shown(v)}"

    def describe(self) -> str:
        return "auto | cpu | cuda[:N]"


SEED = Whole(0, 2**31 - 1)  # numpy's seeds are unsigned 32-bit, and each process adds its rank
COUNT = Whole(1)
DTYPE = OneOf(("float32", "bfloat16", "float16"))
POSITIVE = Real(0, open_lo=True)
LIMIT = Real(0, open_lo=True, unbounded=True)
NONNEGATIVE = Real(0)
FRACTION = Real(0, 1)


def _embedded_model(role: str, under: str = "model.embedded.") -> dict:
    p = f"{under}{role}."
    return {
        **{p + "size." + k: COUNT for k in ("hidden", "intermediate", "layers", "heads", "max_positions")},
        p + "size.tie_embeddings": Flag(),
        p + "steps": COUNT, p + "lr": POSITIVE, p + "batch_size": COUNT, p + "warmup": Whole(0),
        p + "label_smoothing": Real(0, 1, open_hi=True),
    }


def _model(role: str) -> dict:
    p = f"model.{role}."
    return {p + "name_or_path": Text(), p + "dtype": DTYPE, p + "gguf_file": Maybe(Text())}


TRAIN: dict[str, object] = {
    "method.name": OneOf(tuple(sorted(METHODS))),
    "method.penalty": NONNEGATIVE, "method.informative": Weight(), "method.penalty_on": OneOf(PENALTY_ON),
    "method.exact_weight": NONNEGATIVE,
    "method.beta": FRACTION, "method.on_policy_fraction": FRACTION,
    "method.off_policy": OneOf(("teacher", "reference")),
    "method.controller": OneOf(("dual_ascent", "pid")), "method.init": NONNEGATIVE, "method.lr": NONNEGATIVE,
    "method.ema_decay": Real(0, 1, open_hi=True), "method.lam_max": Real(0, unbounded=True),
    "method.pid.kp": NONNEGATIVE, "method.pid.ki": NONNEGATIVE, "method.pid.kd": NONNEGATIVE,
    "method.estimator": OneOf(("sampled", "full")), "method.returns": OneOf(("token", "to_go")),
    "method.budget_clip": POSITIVE,
    "constraint.cost": OneOf(tuple(COSTS)), "constraint.kind": OneOf(KINDS),
    "constraint.threshold": POSITIVE,  # every cost is a divergence: d <= 0 is infeasible
    "constraint.pathwise_gradient": Flag(),
    "rollout.backend": OneOf(BACKENDS), "rollout.importance_correction": OneOf(LEVELS),
    "rollout.prompts_per_step": COUNT, "rollout.samples_per_prompt": COUNT, "rollout.max_new_tokens": COUNT,
    "rollout.temperature": POSITIVE, "rollout.top_p": Real(0, 1, open_lo=True), "rollout.importance_cap": LIMIT,
    "rollout.vllm.gpu_memory_utilization": Real(0, 1, open_lo=True), "rollout.vllm.dtype": DTYPE,
    "rollout.vllm.max_model_len": Maybe(COUNT), "rollout.vllm.enforce_eager": Flag(), "rollout.vllm.sleep": Flag(),
    "optim.steps": COUNT, "optim.lr": POSITIVE, "optim.betas": Seq(Real(0, 1, open_hi=True), 2),
    "optim.weight_decay": NONNEGATIVE, "optim.warmup": Whole(0), "optim.schedule": OneOf(("constant", "cosine")),
    "optim.grad_clip": LIMIT, "optim.inner_epochs": COUNT, "optim.micro_batch": COUNT,
    "optim.clip_low": Real(0, 1, open_lo=True), "optim.clip_high": POSITIVE,
    "optim.adv_scale": OneOf(SCALES), "optim.adv_baseline": OneOf(BASELINES),
    "scoring.chunk": COUNT, "scoring.micro_batch": COUNT, "scoring.share_prompt": Flag(),
    "scoring.reuse_student_pass": Flag(),
    "eval.at_start": Flag(), "eval.every": Whole(0), "eval.n_problems": COUNT, "eval.samples": COUNT,
    "eval.batch_size": COUNT, "eval.split": OneOf(SPLITS),
    "selection.metric": OneOf(METRICS), "selection.constraint_metric": OneOf(("satisfaction_rate",
                                                                              "never_exceeded_rate")),
    "selection.target": FRACTION,
    "logging.progress": Flag(), "logging.wandb.enabled": Flag(),
    "logging.wandb.mode": OneOf(("offline", "online", "disabled")), "logging.wandb.project": Text(),
    "logging.wandb.entity": Maybe(Text()),
    "checkpoint.every": Whole(0), "checkpoint.keep": Whole(0),  # keep=0: every checkpoint
    "checkpoint.grace_seconds": Maybe(NONNEGATIVE),  # null: no limit
    "guards.max_bad_steps": COUNT,
    "resume": Maybe(Text()), "paths.cache": Text(), "seed": SEED, "device": Device(),
    "autocast": Maybe(OneOf(("bfloat16", "float16"))), "save_student": Flag(), "overwrite": Flag(), "debug": Flag(),
    **_model("student"), **_model("teacher"),
    "model.student.gradient_checkpointing": Flag(), "model.student.keep_layers": COUNT,
    "model.student.lora": Maybe(Section()), "model.student.lora.r": COUNT, "model.student.lora.alpha": POSITIVE,
    "model.student.lora.dropout": Real(0, 1, open_hi=True),
    "model.student.lora.target_modules": Seq(Text()),
    "model.teacher.quantization": Maybe(OneOf(("8bit", "4bit"))), "model.teacher.shard": Flag(),
    "model.teacher.backend": OneOf(("local", "server")), "model.teacher.server.base_url": Text(("://",)),
    "model.teacher.server.model": Maybe(Text()), "model.teacher.server.api": OneOf(APIS),
    "model.teacher.server.api_key_env": Maybe(Text()), "model.teacher.server.timeout": POSITIVE,
    "model.teacher.server.retries": Whole(0), "model.teacher.server.max_concurrency": COUNT,
    "model.teacher.server.top_k": Whole(0),
    "model.embedded.seed": SEED, "model.embedded.sft_problems": COUNT,
    "model.embedded.tokenizer.vocab_size": COUNT,
    **_embedded_model("teacher"), **_embedded_model("student"),
    "model.embedded.teacher.flaw": Maybe(OneOf(tuple(FLAWS))),
    "model.embedded.teacher.tokenizer.vocab_size": COUNT,  # a teacher with its own tokenizer (docs/methods.md)
    "task.name": Text(), "task.source": Text(), "task.hub_config": Maybe(Text()),
    "task.train_source": Maybe(Text()), "task.test_source": Maybe(Text()),
    "task.train_split": Text(), "task.test_split": Text(),
    "task.answer_format": OneOf(("gsm8k", "math")), "task.answer_extraction": OneOf(("strict", "flexible")),
    "task.use_chat_template": OneOf((True, False, "auto")), "task.allow_train_on_test": Flag(),
    "task.prompt_template": Text(("{question}",)),
    "task.fields.question": Text(), "task.fields.solution": Text(),
    "task.family_field": Maybe(Text()),
    "task.seed": SEED, "task.n_train": Whole(0), "task.n_test": Whole(0),
    "task.held_out_fraction": Real(0, 1, open_lo=True, open_hi=True),
    "task.validation_fraction": Real(0, 1, open_hi=True), "task.n_validation": Whole(0),
    "task.difficulty.min_steps": COUNT, "task.difficulty.max_steps": COUNT, "task.difficulty.max_operand": Whole(2),
    # several budgets, one per teacher (cdistill/teachers.py): entries named by the user, "*" in the table
    "constraints.*": Section(), "constraints.*.teacher": Text(), "constraints.*.cost": OneOf(tuple(COSTS)),
    "constraints.*.kind": OneOf(KINDS), "constraints.*.threshold": POSITIVE,
    "model.teachers.*": Section(), **_model("teachers.*"),
    "model.teachers.*.quantization": Maybe(OneOf(("8bit", "4bit"))), "model.teachers.*.shard": Flag(),
    "model.teachers.*.backend": OneOf(("local", "server")), "model.teachers.*.server.base_url": Text(("://",)),
    "model.teachers.*.server.model": Maybe(Text()), "model.teachers.*.server.api": OneOf(APIS),
    "model.teachers.*.server.api_key_env": Maybe(Text()), "model.teachers.*.server.timeout": POSITIVE,
    "model.teachers.*.server.retries": Whole(0), "model.teachers.*.server.max_concurrency": COUNT,
    "model.teachers.*.embedded": Maybe(Section()), **_embedded_model("teachers.*.embedded", "model."),
    "model.teachers.*.embedded.flaw": Maybe(OneOf(tuple(FLAWS))),
    "model.teachers.*.embedded.tokenizer.vocab_size": COUNT,
    "method.penalties": Maybe(Section()), "method.penalties.*": NONNEGATIVE,  # soft_penalty: a weight per constraint
}

EVAL: dict[str, object] = {
    "run_dir": Text(), "checkpoint": Maybe(Text()), "threshold": Maybe(POSITIVE), "n_problems": Maybe(COUNT),
    "samples": Maybe(COUNT), "device": Maybe(Device()), "family_field": Maybe(Text()), "seed": SEED,
    "split": Maybe(OneOf(SPLITS)),
    "teacher_url": Maybe(Text(("://",))),
}

JUDGE: dict[str, object] = {
    "run_a": Text(), "run_b": Text(), "n_problems": Maybe(COUNT), "device": Device(), "debug": Flag(),
    "judge.backend": OneOf(("openai", "hf")), "judge.model": Text(), "judge.base_url": Text(),
    "judge.api_key_env": Maybe(Text()), "judge.timeout_s": POSITIVE, "judge.retries": Whole(0),
    "judge.backoff_s": NONNEGATIVE, "judge.max_new_tokens": COUNT, "judge.temperature": NONNEGATIVE,
    "judge.solution": OneOf(("greedy", "sample0")),
    "judge.template": Text(("{question}", "{solution_1}", "{solution_2}")),
}

PROTOCOL: dict[str, object] = {
    "dir": Text(), "methods": Seq(OneOf(tuple(sorted(METHODS)))), "trials": COUNT, "steps": COUNT,
    "tuning_seed": SEED, "sampler_seed": SEED, "final_seeds": Seq(SEED), "train": Seq(Text()),
    "checkpoint_every": Whole(0), "verdicts.comparisons": Seq(Seq(OneOf(tuple(sorted(METHODS))), 2)),
    "verdicts.primary": Text(), "verdicts.alpha": Real(0, 0.5, open_lo=True, open_hi=True),  # the report reads them
    "verdicts.equivalence_margin": POSITIVE,
}

TABLES = {"train": TRAIN, "eval": EVAL, "judge": JUDGE, "protocol": PROTOCOL}


def leaves(node, prefix: str = "", copies: bool = False):
    """``(dotted key, value)`` for every setting under ``node`` (an OmegaConf config), values resolved; a
    mapping is a leaf too when the table gives it an entry of its own (``Section``), then its keys follow.
    Interpolated settings (``${model.student.dtype}``, ``${oc.env:LR}``) only with ``copies``: walked after the
    rest, a bad value is named where it was set."""
    from omegaconf import OmegaConf

    for key in node:
        full = f"{prefix}{key}"
        if OmegaConf.is_missing(node, key):
            raise ConfigError(f"{full} is required: give {full}=<value>")
        copy = OmegaConf.is_interpolation(node, key)
        value = node[key]
        if OmegaConf.is_dict(value):
            if copy == copies:
                yield full, OmegaConf.to_container(value, resolve=True)
            yield from leaves(value, full + ".", copies)
        elif copy == copies:
            yield full, OmegaConf.to_container(value, resolve=True) if OmegaConf.is_list(value) else value


def check(cfg, command: str, unknown: bool = True) -> None:
    """Refuse the first value of ``cfg`` that its entry in ``TABLES[command]`` does not allow, in one line;
    with ``unknown``, refuse a key without an entry too."""
    table = TABLES[command]
    for key, value in [*leaves(cfg), *leaves(cfg, copies=True)]:
        spec = entry(table, key)
        if spec is None:
            if isinstance(value, dict) or not unknown:  # a plain mapping: its keys are checked one by one
                continue
            raise ConfigError(unknown_key(key, command))
        problem = spec.problem(key, value)
        if problem:
            raise ConfigError(problem)


def entry(table: dict, key: str):
    """``key``'s entry: its own, or one whose ``*`` stands for a name the user gives (``constraints.*.cost``)."""
    spec = table.get(key)
    if spec is not None:
        return spec
    parts = key.split(".")
    for i in range(len(parts)):
        spec = table.get(".".join([*parts[:i], "*", *parts[i + 1:]]))
        if spec is not None:
            return spec
    return None


def settings(command: str) -> set[str]:
    """Every key that ``command`` takes, and every section above one (``optim``, ``task.difficulty``)."""
    keys = set(TABLES[command])
    return keys | {k.rsplit(".", n)[0] for k in keys for n in range(1, k.count(".") + 1)}


def unknown_key(key: str, command: str) -> str:
    """``key`` refused as no setting of ``command``, with the nearest one that is (the commonest mistake is a
    typo)."""
    import difflib

    near = difflib.get_close_matches(key, sorted(settings(command)), n=1, cutoff=0.6)
    if near and "*" in near[0]:  # a named entry's setting: the entry's own name where the table has "*"
        parts, mine = near[0].split("."), key.split(".")
        near = [".".join(mine[i] if p == "*" and i < len(mine) else p for i, p in enumerate(parts))]
    hint = f"did you mean {near[0]}?" if near else "a typo?"
    return f"{key} is not a setting of cdistill {command} ({hint})"
