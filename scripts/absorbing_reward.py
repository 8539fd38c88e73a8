#!/usr/bin/env python
"""What cmdp's absorbing reward does to the update (issue 24, item 6; docs/methods.md, "cmdp's absorbing reward").

On the START student of a run (``--student``: a trained one), a few rollout batches are drawn exactly as training
draws them (the same prompt stream, seed, ``draw_rollout`` and ``score_rollout``; the first batch is the one a run
with this seed trains on at step 1), and for each setting of the modified reward the method's own advantage code
(``Method.advantages``) and the training loss (``train.micro_batch_loss``: the clipped policy loss plus the method's
extra term) are applied to the same batches. Settings: ``cmdp`` with the informative weight w in {0, 0.01, 0.25, 1}
(``penalty_on=first``) and {0, 0.25, 1} (``penalty_on=every``), penalty n = ``method.penalty`` (1 by default);
``cmdp`` w = 1 under ``optim.adv_scale=std``; ``soft_penalty`` 0.1; ``grpo``; at each budget d of ``--budgets``.
Printed per setting (Markdown, stdout; also written with the command and commit to outputs/bench/absorbing_reward.md):

- absorbed: the share of completions with a violation (a prefix with C_t > d);
- return G_t: mean and sd over every valid token of the batch of the reward-to-go of the modified reward (the method
  with ``optim.adv_baseline=none optim.adv_scale=none``), and of the advantage A as trained;
- Var(A) task / cost: Var(A_task) / Var(A) and Var(A_cost) / Var(A), where A_task is the same method's advantage
  with its cost terms switched off (cmdp: n = 0, w = 0, the task reward still forfeited on violation;
  soft_penalty: λ = 0), in the setting's own scale, and A_cost = A − A_task (−n and −w c_t; λ C(y)); the rest is
  2 Cov / Var(A);
- A_1 correct − wrong: the mean advantage of a completion's first token (its whole modified return, centred) over
  correct completions minus over wrong ones (R by the verifier, in budget or not), with the sd of A_1: how much the
  update favours a correct answer against how much the returns spread;
- |g|: the norm of the loss's gradient before clipping (one backward per setting and batch), its range over the
  batches, how many batches ``optim.grad_clip`` clips and the mean factor min(1, clip / |g|) it scales them by;
- |g_task| / |g|: the norm of the gradient of the task part's advantages alone (A_task), relative to |g|;
- cos(g, g_grpo): cosine between the setting's gradient and grpo's on the same batch (the task reward's direction);
  cos between batches: the mean cosine between its gradients on different batches (1: a consistent direction,
  ~0: the batch-to-batch noise dominates);
- ΔH and Δ log π greedy-correct: the first-order change of the mean token entropy (on the sampled positions) and of
  the mean log-prob per token of the student's correct greedy completions of ``--greedy-prompts`` validation
  problems, for the AdamW step (lr ``optim.lr``, ``optim.betas``, after clipping) that follows the batches'
  gradients taken as consecutive steps at the start weights: -lr m̂ / (sqrt(v̂) + eps). With one batch it is Adam's
  first step, -lr sign(g), whatever the clip.

``--train-steps K`` (default 10; 0: skip) then trains every setting K steps from the start with
``cdistill.train.train`` at the first budget (the run's seed, defaults otherwise) and evaluates it on the
validation problems (greedy, and one sample each): accuracy before and after, the batch entropy, the gradient norms
and clipped steps logged, and the RMS change of the weights in units of lr (AdamW moves a coordinate by at most about
lr a step).

With ``--trials DIR`` (default: outputs/studies/default/tuning/cmdp when present) the per-step records of the
training runs under it (``trial*/metrics.jsonl``, settings from ``config.yaml`` or ``.hydra/overrides.yaml``,
validation results from ``summary.json``) are summarised in one more table: entropy and gradient norm at the start
and the end, the share of steps clipped. For a trial trained on the same models, task, rollout and seed as this
script's batches, its logged step-1 gradient norm is recomputed on batch 1 with its own settings (a check that the
batches are training's).

    OMP_NUM_THREADS=1 .venv/bin/python scripts/absorbing_reward.py       # 4 batches, d = 10 and 5, 10 steps each
    OMP_NUM_THREADS=1 .venv/bin/python scripts/absorbing_reward.py --tiny --batches 2 --greedy-prompts 4
    .venv/bin/python scripts/absorbing_reward.py method.penalty=2        # extra arguments: Hydra overrides
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cdistill.eval.evaluate import evaluate  # noqa: E402
from cdistill.methods import build_method  # noqa: E402
from cdistill.models.forward import completion_forward, output_weight, prompt_groups  # noqa: E402
from cdistill.models.loading import build_components  # noqa: E402
from cdistill.models.parallel import ForwardRoot, StudentForward  # noqa: E402
from cdistill.objectives import constraint_stats, entropy_from_logits, positionwise  # noqa: E402
from cdistill.objectives.chunking import logits_from_hidden  # noqa: E402
from cdistill.rollout.sampling import generate, generation_config  # noqa: E402
from cdistill.rollout.source import Source  # noqa: E402
from cdistill.rollout.sources import PromptStream, draw_rollout  # noqa: E402
from cdistill.runtime import autocast, seed_everything  # noqa: E402
from cdistill.scoring import score_rollout, scoring_spec  # noqa: E402
from cdistill.train import micro_batch_loss, train  # noqa: E402

# (label, method overrides, the overrides of its task part: the same method with its cost terms off)
SETTINGS = [
    *[(f"cmdp w={w:g} {on}", ["method=cmdp", f"method.informative={w}", f"method.penalty_on={on}"],
       ["method.penalty=0", "method.informative=0"])
      for on in ("first", "every") for w in ((0, 0.01, 0.25, 1) if on == "first" else (0, 0.25, 1))],
    ("cmdp w=1 first, adv_scale=std", ["method=cmdp", "method.informative=1", "optim.adv_scale=std"],
     ["method.penalty=0", "method.informative=0"]),
    ("soft_penalty 0.1", ["method=soft_penalty", "method.penalty=0.1"], ["method.penalty=0"]),
    ("grpo", ["method=grpo"], []),
]
MATCH = ("model", "task", "rollout", "scoring", "seed")  # what a trial must share with the batches to be recomputed


def log(msg: str) -> None:
    print(f"[absorbing_reward {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def base_overrides(args) -> list[str]:
    overrides = [f"paths.cache={args.cache}", f"seed={args.seed}", *args.overrides]
    if args.tiny:
        sys.path.insert(0, str(ROOT / "tests"))
        from helpers import TINY  # the test suite's sizes: the real code path in seconds

        overrides = [*TINY, *overrides]
    return overrides


def compose_cfg(overrides: list[str]):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides)


def with_keys(cfg, **dotted):
    """A copy of ``cfg`` with ``dotted`` keys (a.b=value) set."""
    out = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    for key, value in dotted.items():
        OmegaConf.update(out, key.replace("__", "."), value, merge=False)
    return out


def flat_grad(params, loss, retain: bool = True) -> torch.Tensor:
    grads = torch.autograd.grad(loss, params, retain_graph=retain, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).flatten() for p, g in zip(params, grads, strict=True)])


def token_stats(x: torch.Tensor, mask: torch.Tensor) -> tuple[float, float]:
    v = x[mask].double()
    return float(v.mean()), float(v.std(unbiased=False)) if v.numel() else float("nan")


def token_var(x: torch.Tensor, mask: torch.Tensor) -> float:
    return float(x[mask].double().var(unbiased=False)) if mask.any() else float("nan")


class Setting:
    """One method's settings at one budget: the method as trained, without its baseline, and its task part."""

    def __init__(self, label: str, cfg, task_overrides: list[str], base: list[str], method_overrides: list[str]):
        self.label, self.cfg = label, cfg
        self.method = build_method(cfg.method, cfg.constraint, cfg.optim, seed=cfg.seed)
        raw = with_keys(cfg, optim__adv_baseline="none", optim__adv_scale="none")
        self.raw = build_method(cfg.method, cfg.constraint, raw.optim)
        task_cfg = compose_cfg([*base, *method_overrides, *task_overrides]) if task_overrides else cfg
        self.task = build_method(task_cfg.method, task_cfg.constraint, task_cfg.optim)
        self.rows: list[dict] = []  # one per batch
        self.grads: list[torch.Tensor] = []  # clipped, one per batch


def measure(setting: Setting, scored, forward, params, grpo_grad: torch.Tensor | None) -> torch.Tensor:
    """The setting's numbers on one scored batch; returns its gradient before clipping."""
    cfg, mask = setting.cfg, scored.mask
    adv = setting.method.advantages(scored)
    ret = setting.raw.advantages(scored)
    # the task part in the setting's own units: with adv_scale=std each method divides by its own group sigma
    a_task = setting.task.advantages(scored) * (setting.task.scale / setting.method.scale)[:, None]
    a_cost = adv - a_task
    first = adv[:, 0]
    correct = scored.task_reward > 0.5
    run = SimpleNamespace(cfg=cfg, parts=SimpleNamespace(student=forward.student, teacher=forward.teacher,
                                                         vocab=forward.vocab), method=setting.method)
    rows = torch.arange(mask.shape[0])
    loss, _ = micro_batch_loss(run, scored, rows=rows, forward=forward.pass_, advantages=adv, importance=None,
                               denom=mask.sum().clamp(min=1))
    g = flat_grad(params, loss)
    norm = float(g.norm())
    # the task part's own gradient (its advantages alone, in the setting's units)
    task_run = SimpleNamespace(cfg=cfg, parts=run.parts, method=setting.task)
    task_loss, _ = micro_batch_loss(task_run, scored, rows=rows, forward=forward.pass_, advantages=a_task,
                                    importance=None, denom=mask.sum().clamp(min=1))
    task_norm = float(flat_grad(params, task_loss).norm()) if task_loss.requires_grad else 0.0
    clip = float(cfg.optim.grad_clip)
    factor = min(1.0, clip / norm) if norm > 0 else 1.0
    var = token_var(adv, mask)
    setting.rows.append({
        "absorbed": float((scored.stats.violation_step >= 0).double().mean()),
        "ret": token_stats(ret, mask), "adv": token_stats(adv, mask),
        "task_share": token_var(a_task, mask) / var if var > 0 else float("nan"),
        "cost_share": token_var(a_cost, mask) / var if var > 0 else float("nan"),
        "a1_gap": (float(first[correct].double().mean() - first[~correct].double().mean())
                   if correct.any() and (~correct).any() else float("nan")),
        "a1_sd": float(first.double().std(unbiased=False)),
        "norm": norm, "clipped": norm > clip, "factor": factor,
        "task_norm": task_norm / norm if norm > 0 else float("nan"),
        "cos_grpo": (float(torch.nn.functional.cosine_similarity(g, grpo_grad, dim=0))
                     if grpo_grad is not None and norm > 0 and grpo_grad.norm() > 0 else float("nan")),
    })
    setting.grads.append(g * factor)
    return g


def adam_direction(grads: list[torch.Tensor], optim) -> torch.Tensor:
    """AdamW's step after ``grads`` (clipped) as consecutive steps: -lr m̂ / (sqrt(v̂) + eps), weight decay aside."""
    b1, b2 = optim.betas
    m = torch.zeros_like(grads[0])
    v = torch.zeros_like(grads[0])
    for g in grads:
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
    k = len(grads)
    m_hat, v_hat = m / (1 - b1**k), v / (1 - b2**k)
    return -optim.lr * m_hat / (v_hat.sqrt() + 1e-8)


def mean_pairwise_cos(grads: list[torch.Tensor]) -> float:
    cos = [float(torch.nn.functional.cosine_similarity(a, b, dim=0))
           for i, a in enumerate(grads) for b in grads[i + 1:] if a.norm() > 0 and b.norm() > 0]
    return sum(cos) / len(cos) if cos else float("nan")


def mean_entropy(hidden: torch.Tensor, parts, cfg, mask: torch.Tensor) -> torch.Tensor:
    """The student's mean token entropy over the valid positions (at the rollout temperature), with its gradient
    (the scored forward's entropy is a detached diagnostic)."""
    weight = output_weight(parts.student)

    def fn(h: torch.Tensor) -> torch.Tensor:
        return entropy_from_logits(logits_from_hidden(h, weight, parts.vocab, cfg.rollout.temperature))

    ent = positionwise(fn, mask, [hidden], cfg.scoring.chunk)
    return ent.sum() / mask.sum().clamp(min=1)


def greedy_gradient(parts, cfg, n: int, params) -> tuple[torch.Tensor | None, int, int]:
    """∇ of the mean log-prob per token of the start student's correct greedy completions of ``n`` validation
    problems (the test split where there is no validation split); (gradient, correct, problems)."""
    try:
        problems = parts.task.split("validation")[:n]
    except Exception:  # noqa: BLE001 - a task without a validation split
        problems = parts.task.test[:n]
    prompts = [parts.task.prompt(p) for p in problems]
    gen = generation_config(parts.tokenizer, cfg.rollout.max_new_tokens, 1.0, 1.0, True)
    with torch.random.fork_rng():
        greedy = generate(parts.student, parts.tokenizer, prompts, 1, gen, parts.device, parts.task.add_special_tokens)
    correct = torch.tensor([parts.task.reward(t, p) > 0.5 for t, p in zip(greedy.texts, problems, strict=True)])
    if not correct.any():
        return None, 0, len(problems)
    seq = greedy.seq.for_autograd()
    out = completion_forward(parts.student, seq, scoring_spec(cfg, parts.vocab).replace(temperature=1.0))
    m = seq.completion_mask & correct.to(seq.completion_mask.device)[:, None]
    f = (out.logp * m).sum() / m.sum().clamp(min=1)
    return flat_grad(params, f, retain=False), int(correct.sum()), len(problems)


def num(value) -> str:
    try:
        return f"{float(value):.3g}"
    except (TypeError, ValueError):
        return str(value)


def fmt(x: float, digits: int = 2) -> str:
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def sci(x: float) -> str:
    return "nan" if math.isnan(x) else f"{x:+.1e}"


def mean(xs) -> float:
    xs = [x for x in xs if not math.isnan(x)]
    return sum(xs) / len(xs) if xs else float("nan")


def table(results: dict, clip: float, n_batches: int) -> str:
    head = ["d", "setting", "absorbed", "return G_t mean ± sd", "advantage A mean ± sd", "Var(A): task / cost",
            "A_1 correct − wrong (sd A_1)", "‖g‖ before clip: mean [min, max]", f"clipped at {clip:g} (mean factor)",
            "‖g_task‖ / ‖g‖", "cos(g, g_grpo)", "cos between batches", "ΔH per step", "Δ log π greedy-correct per step"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (d, label), s in results.items():
        r = s["rows"]
        norms = [x["norm"] for x in r]
        cells = [f"{d:g}", label, fmt(mean(x["absorbed"] for x in r)),
                 f"{fmt(mean(x['ret'][0] for x in r))} ± {fmt(mean(x['ret'][1] for x in r))}",
                 f"{fmt(mean(x['adv'][0] for x in r))} ± {fmt(mean(x['adv'][1] for x in r))}",
                 f"{fmt(mean(x['task_share'] for x in r))} / {fmt(mean(x['cost_share'] for x in r))}",
                 f"{fmt(mean(x['a1_gap'] for x in r))} ({fmt(mean(x['a1_sd'] for x in r))})",
                 f"{fmt(mean(norms))} [{fmt(min(norms))}, {fmt(max(norms))}]",
                 f"{sum(x['clipped'] for x in r)}/{n_batches} ({fmt(mean(x['factor'] for x in r), 3)})",
                 fmt(mean(x["task_norm"] for x in r)), fmt(mean(x["cos_grpo"] for x in r), 3),
                 fmt(s["consistency"], 3), sci(s["dH"]), sci(s["dgreedy"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def short_training(base: list[str], d: float, steps: int, n_problems: int, root: Path, start: dict) -> dict:
    """Each setting trained ``steps`` steps from the start by ``cdistill.train.train`` (the run's seed, defaults
    otherwise), then evaluated on the first ``n_problems`` validation problems: {label: numbers}. ``start``: the
    start student's weights, against which the trained ones are compared."""
    from safetensors.torch import load_file

    out = {}
    for label, method_ov, _ in SETTINGS:
        cfg = compose_cfg([*base, *method_ov, f"constraint.threshold={d}", f"optim.steps={steps}",
                           "eval.at_start=false", "eval.every=0", "eval.split=validation",
                           f"eval.n_problems={n_problems}", "eval.samples=1", "save_student=true",
                           "checkpoint.every=0", "logging.wandb.enabled=false", "logging.progress=false"])
        run_dir = root / label.replace(" ", "_").replace("=", "")
        run_dir.mkdir(parents=True)
        summary = train(cfg, run_dir)
        recs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        recs = [r for r in recs if "grad_norm" in r]
        clip = float(cfg.optim.grad_clip)
        trained = load_file(str(run_dir / "student" / "model.safetensors"))
        keys = [k for k in trained if k in start]
        moved = torch.cat([(trained[k].double() - start[k].double()).flatten() for k in keys])
        out[label] = {"moved": float(moved.pow(2).mean().sqrt()) / float(cfg.optim.lr),
                      "unparsed": summary["unparsed_rate_greedy"], "greedy": summary["accuracy_greedy"],
                      "sampled": summary["accuracy_sampled"], "entropy": recs[-1]["entropy"],
                      "norm": mean(r["grad_norm"] for r in recs),
                      "clipped": sum(r["grad_norm"] > clip for r in recs), "steps": len(recs),
                      "reward": mean(r["reward"] for r in recs)}
    return out


def training_table(res: dict, start: dict, d: float) -> str:
    head = ["setting", "greedy acc: start → after", "greedy unparsed after", "sampled acc: start → after",
            "entropy (batch): step 1 → last", "mean training reward", "‖g‖ before clip, mean", "steps clipped",
            "RMS weight change / lr"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, r in res.items():
        cells = [f"{label} (d = {d:g})", f"{fmt(start['greedy'], 3)} → {fmt(r['greedy'], 3)}", fmt(r["unparsed"], 3),
                 f"{fmt(start['sampled'], 3)} → {fmt(r['sampled'], 3)}",
                 f"{fmt(start['entropy'], 3)} → {fmt(r['entropy'], 3)}", fmt(r["reward"], 3), fmt(r["norm"]),
                 f"{r['clipped']}/{r['steps']}", fmt(r["moved"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def read_overrides(path: Path) -> dict:
    try:
        items = yaml.safe_load(path.read_text()) or []
    except (OSError, yaml.YAMLError):
        return {}
    return dict(str(x).lstrip("+").split("=", 1) for x in items if "=" in str(x))


def trial_setting(trial: Path):
    """key -> a trial's value of a config key: its config.yaml, else its command-line overrides."""
    ov = read_overrides(trial / ".hydra" / "overrides.yaml")
    cfg = OmegaConf.load(trial / "config.yaml") if (trial / "config.yaml").exists() else None

    def get(key: str, default="?"):
        return OmegaConf.select(cfg, key, default=ov.get(key, default)) if cfg is not None else ov.get(key, default)

    return get


def trials_table(trials_dir: Path, recomputed: dict) -> str:
    """The per-step records of the trials under ``trials_dir``: entropy and gradient norm over training."""
    head = ["trial", "w", "penalty_on", "n", "adv_scale", "lr", "grad_clip", "d", "steps logged",
            "entropy: step 1 → 10 → 50 → last", "‖g‖: steps 1–10 mean → last 10 mean", "steps clipped",
            "validation greedy / sampled / never exceeded", "step-1 ‖g‖ logged / recomputed"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for t in sorted(trials_dir.glob("trial*"), key=lambda p: (len(p.name), p.name)):
        metrics = t / "metrics.jsonl"
        if not metrics.exists():
            continue
        recs = []
        for line in metrics.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # a line being written
                continue
            if "entropy" in rec and "grad_norm" in rec:
                recs.append(rec)
        if not recs:
            continue
        get = trial_setting(t)
        clip = float(get("optim.grad_clip", "nan"))
        ent = {r["step"]: r["entropy"] for r in recs}
        norms = [r["grad_norm"] for r in recs]
        ent_at = " → ".join(fmt(ent[s]) for s in (1, 10, 50) if s in ent) + f" → {fmt(recs[-1]['entropy'])}"
        summary = t / "summary.json"
        val = "(running)"
        if summary.exists():
            s = json.loads(summary.read_text())
            val = f"{fmt(s['accuracy_greedy'], 3)} / {fmt(s['accuracy_sampled'], 3)} / " \
                  f"{fmt(s.get('never_exceeded_rate', float('nan')), 3)}"
        cells = [t.name, num(get("method.informative")), str(get("method.penalty_on", "first")),
                 num(get("method.penalty")), str(get("optim.adv_scale")), num(get("optim.lr")), num(clip),
                 num(get("constraint.threshold")), f"{recs[-1]['step']}", ent_at,
                 f"{fmt(mean(norms[:10]))} → {fmt(mean(norms[-10:]))}",
                 f"{sum(n > clip for n in norms)}/{len(norms)}", val,
                 f"{fmt(recs[0]['grad_norm'], 3)} / {fmt(recomputed.get(t.name, float('nan')), 3)}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) if len(lines) > 2 else ""


def recompute_trials(trials_dir: Path, cfg, scored_d: dict, forward, params, rescore) -> dict:
    """Step-1 gradient norm of each trial trained on the same models, task, rollout and seed, on batch 1."""
    out = {}
    for t in sorted(trials_dir.glob("trial*")):
        if not (t / "config.yaml").exists():
            continue
        tcfg = OmegaConf.load(t / "config.yaml")
        mine = OmegaConf.to_container(cfg, resolve=True)
        theirs = OmegaConf.to_container(tcfg, resolve=True)
        if any(mine.get(k) != theirs.get(k) for k in MATCH) or tcfg.constraint.cost != cfg.constraint.cost \
                or tcfg.constraint.kind != cfg.constraint.kind:
            continue
        d = float(tcfg.constraint.threshold)
        scored = scored_d.get(d) or rescore(d)
        method = build_method(tcfg.method, tcfg.constraint, tcfg.optim, seed=tcfg.seed)
        run = SimpleNamespace(cfg=tcfg, parts=SimpleNamespace(student=forward.student, teacher=forward.teacher,
                                                              vocab=forward.vocab), method=method)
        adv = method.advantages(scored)
        loss, _ = micro_batch_loss(run, scored, rows=torch.arange(scored.mask.shape[0]), forward=forward.pass_,
                                   advantages=adv, importance=None, denom=scored.mask.sum().clamp(min=1))
        out[t.name] = float(flat_grad(params, loss).norm())
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--batches", type=int, default=4, help="rollout batches (rollout.prompts_per_step prompts x "
                   "rollout.samples_per_prompt samples each)")
    p.add_argument("--budgets", default="10,5", help="comma-separated d (constraint.threshold)")
    p.add_argument("--greedy-prompts", type=int, default=308, help="validation problems for the greedy log-prob and "
                   "the short training's evaluation (the embedded task has 308)")
    p.add_argument("--train-steps", type=int, default=10, help="train every setting this many steps from the start "
                   "at the first budget and evaluate it (0: skip)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tiny", action="store_true", help="the test suite's tiny models (tests/helpers.py TINY)")
    p.add_argument("--trials", default=None, help="a tuning study's method dir (trial*/metrics.jsonl); default "
                   "outputs/studies/default/tuning/cmdp when present ('' for none)")
    p.add_argument("--student", default=None, help="measure a trained student instead of the start (a run's student/ "
                   "dir, HF format); the trials' step-1 check is then skipped")
    p.add_argument("--cache", default=str(ROOT / "outputs" / "cache"), help="paths.cache: the embedded models")
    p.add_argument("--out", default=None, help="Markdown report (default outputs/bench/absorbing_reward.md, "
                   "absorbing_reward_tiny.md with --tiny)")
    p.add_argument("overrides", nargs="*", help="Hydra overrides on the default config")
    args = p.parse_args()

    base = base_overrides(args)
    cfg = compose_cfg(base)
    budgets = [float(x) for x in args.budgets.split(",")]
    t0 = time.time()
    log("building / loading the models (a first build of the embedded pair takes minutes)")
    seed_everything(args.seed)
    parts = build_components(cfg, student_path=args.student)
    parts.student.train(False)
    params = [q for q in parts.student.parameters() if q.requires_grad]
    start_weights = {k: v.detach().clone() for k, v in parts.student.state_dict().items()}
    student_forward = StudentForward(ForwardRoot(parts.student))
    log(f"models ready in {time.time() - t0:.0f}s on {parts.device}")

    settings = {}
    for d in budgets:
        for label, method_ov, task_ov in SETTINGS:
            over = [*base, *method_ov, f"constraint.threshold={d}"]
            settings[d, label] = Setting(label, compose_cfg(over), task_ov, [*base, f"constraint.threshold={d}"],
                                         method_ov)

    grad_greedy, n_correct, n_greedy = greedy_gradient(parts, cfg, args.greedy_prompts, params)
    log(f"greedy: {n_correct}/{n_greedy} validation problems correct at the start ({time.time() - t0:.0f}s)")

    # the batches, as training draws them: the run's seed, then the prompt stream and the student's samples
    seed_everything(args.seed)
    r = cfg.rollout
    stream = PromptStream(parts.task.train, args.seed)
    gen = generation_config(parts.tokenizer, r.max_new_tokens, r.temperature, r.top_p, False)
    trials_dir = Path(args.trials) if args.trials else ROOT / "outputs" / "studies" / "default" / "tuning" / "cmdp"
    if args.trials == "":
        trials_dir = None
    recomputed, entropy_grads, lengths, rewards, entropies = {}, [], [], [], []
    for b in range(args.batches):
        problems = stream.next(r.prompts_per_step)
        with autocast(cfg, parts.device):
            rollout = draw_rollout(Source.STUDENT, parts, cfg, problems, r.samples_per_prompt, gen)
            per_completion = [q for q in problems for _ in range(r.samples_per_prompt)]
            scored = score_rollout(rollout, per_completion, parts, cfg)
            n = rollout.seq.input_ids.shape[0]
            spec = scoring_spec(cfg, parts.vocab, prompt_groups(rollout.group_size, n, cfg.scoring.share_prompt))
            pass_ = student_forward(rollout.seq.for_autograd(), spec)
        lengths.append(float(scored.mask.sum(1).double().mean()))
        entropies.append(float(scored.entropy[scored.mask].double().mean()))
        rewards.append(float(scored.task_reward.double().mean()))
        forward = SimpleNamespace(pass_=pass_, student=parts.student, teacher=parts.teacher, vocab=parts.vocab)

        def rescore(d, scored=scored):
            c = cfg.constraint
            return dataclasses.replace(scored, stats=constraint_stats(scored.costs, scored.mask, d, c.kind))

        scored_d = {d: rescore(d) for d in budgets}
        entropy_grads.append(flat_grad(params, mean_entropy(pass_.hidden, parts, cfg, scored.mask)))
        for d in budgets:
            grpo = measure(settings[d, "grpo"], scored_d[d], forward, params, None)
            for label, *_ in SETTINGS[:-1]:
                measure(settings[d, label], scored_d[d], forward, params, grpo)
        if b == 0 and trials_dir is not None and trials_dir.is_dir() and args.student is None:
            recomputed = recompute_trials(trials_dir, cfg, scored_d, forward, params, rescore)
        del pass_, forward
        log(f"batch {b + 1}/{args.batches}: reward {rewards[-1]:.3f}, mean length {lengths[-1]:.1f} "
            f"({time.time() - t0:.0f}s)")

    grad_h = torch.stack(entropy_grads).mean(0)
    results = {}
    for key, s in settings.items():
        step = adam_direction(s.grads, s.cfg.optim)
        results[key] = {"rows": s.rows, "consistency": mean_pairwise_cos(s.grads),
                        "dH": float(grad_h @ step),
                        "dgreedy": float(grad_greedy @ step) if grad_greedy is not None else float("nan")}

    student = args.student or cfg.model.student.name_or_path
    tiny = " (tiny test sizes)" if args.tiny else ""
    head = (f"{'Trained' if args.student else 'Start'} student {student}{tiny}, {args.batches} batches of "
            f"{r.prompts_per_step} training prompts x {r.samples_per_prompt} samples (temperature "
            f"{r.temperature:g}, max {r.max_new_tokens} tokens; task reward {mean(rewards):.3f}, mean length "
            f"{mean(lengths):.1f}), seed {args.seed}; constraint {cfg.constraint.kind} of {cfg.constraint.cost}; "
            f"cmdp penalty n = {cfg.method.penalty:g}; optim.adv_scale={cfg.optim.adv_scale}, "
            f"grad_clip={cfg.optim.grad_clip:g}, lr {cfg.optim.lr:g}. ΔH / Δ greedy: first-order change per AdamW "
            f"step (the step after the {args.batches} batches' clipped gradients, taken at the start weights) of the "
            f"mean token entropy of the sampled positions and of the mean log-prob per token of the start student's "
            f"{n_correct} correct greedy completions of {n_greedy} validation problems.")
    text = head + "\n\n" + table(results, cfg.optim.grad_clip, args.batches)
    trials = trials_table(trials_dir, recomputed) if trials_dir is not None and trials_dir.is_dir() else ""
    if trials:
        where = trials_dir.relative_to(ROOT) if trials_dir.is_relative_to(ROOT) else trials_dir
        text += (f"\n\nTraining runs under {where} (per-step records; 'steps clipped': logged gradient norm above "
                 f"the trial's grad_clip):\n\n" + trials)
    if args.train_steps > 0 and args.student is None:  # training starts from the configured start
        d = budgets[0]
        eval_cfg = compose_cfg([*base, "eval.split=validation", f"eval.n_problems={args.greedy_prompts}",
                                "eval.samples=1"])
        report, _ = evaluate(parts, eval_cfg)
        start = {"greedy": report["accuracy_greedy"], "sampled": report["accuracy_sampled"], "entropy": entropies[0]}
        log(f"short training: {len(SETTINGS)} settings x {args.train_steps} steps at d = {d:g}")
        with tempfile.TemporaryDirectory() as tmp:
            trained = short_training(base, d, args.train_steps, args.greedy_prompts, Path(tmp), start_weights)
        text += (f"\n\nEach setting trained {args.train_steps} steps from the start (cdistill.train.train, seed "
                 f"{args.seed}, the defaults otherwise: lr {cfg.optim.lr:g} with {cfg.optim.warmup} warm-up steps, "
                 f"grad_clip {cfg.optim.grad_clip:g}; its first batch is batch 1 above), then evaluated on the first "
                 f"{report['n_problems']} validation problems (greedy, and 1 sample each); entropy: the training "
                 f"batch's mean token entropy at step 1 and at the last step:\n\n"
                 + training_table(trained, start, d))
        log(f"short training done ({time.time() - t0:.0f}s)")
    print(text)
    out = Path(args.out or ROOT / "outputs" / "bench" / ("absorbing_reward_tiny.md" if args.tiny
                                                         else "absorbing_reward.md"))
    out.parent.mkdir(parents=True, exist_ok=True)
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    command = shlex.join(["python", "scripts/absorbing_reward.py", *sys.argv[1:]])
    out.write_text(f"# cmdp's absorbing reward\n\n```\n{command}\n```\n\ncommit {rev.stdout.strip() or 'unknown'}, "
                   f"{time.strftime('%Y-%m-%d')}\n\n{text}\n")
    log(f"written {out} ({time.time() - t0:.0f}s)")


if __name__ == "__main__":
    main()
