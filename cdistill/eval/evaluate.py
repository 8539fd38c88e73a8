"""Held-out evaluation: accuracy (greedy and sampled), divergence, constraint satisfaction, success."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from cdistill.eval.metrics import batch_summary, budget_names, per_sample
from cdistill.eval.stats import rate_interval
from cdistill.rollout.sampling import generate, generation_config
from cdistill.rollout.sources import budget_tracking
from cdistill.runtime import autocast
from cdistill.scoring import score_rollout
from cdistill.tasks.base import family_order
from cdistill.teachers import describe


def evaluate(parts, cfg, n_problems: int | None = None, with_samples: bool = False, policy=None):
    """Report dict (and, with ``with_samples``, one record per problem) for the held-out split ``eval.split``
    (``test``, or ``validation`` for tuning: docs/tasks.md).

    The constraint metrics are measured on sampled completions (the policy's own distribution, which
    the budget constrains); greedy decoding gives a second accuracy. Sampling uses its own seed
    (``cfg.seed``) on a forked RNG: the same weights always give the same report, and evaluating in the
    middle of training does not shift the training run's random stream. ``policy`` (default: the
    student) is the model that answers; the teacher as policy gives the reference accuracy.
    """
    devices = [torch.cuda.current_device()] if parts.device.startswith("cuda") else []
    with torch.random.fork_rng(devices=devices), autocast(cfg, parts.device):
        torch.manual_seed(cfg.seed)
        if getattr(policy, "cross_tokenizer", False):  # the teacher samples and is scored in its own tokenizer
            parts, policy = policy.as_policy(parts), policy.model
        return _evaluate(parts, cfg, n_problems, with_samples, policy or parts.student)


def _evaluate(parts, cfg, n_problems, with_samples, policy):
    split = cfg.eval.get("split", "test")
    problems = parts.task.split(split)[: n_problems or cfg.eval.n_problems]
    tok, ev = parts.tokenizer, cfg.eval
    sampled_cfg = generation_config(tok, cfg.rollout.max_new_tokens, cfg.rollout.temperature, cfg.rollout.top_p, False)
    greedy_cfg = generation_config(tok, cfg.rollout.max_new_tokens, 1.0, 1.0, True)
    track = budget_tracking(parts, cfg)  # used only by a budget-conditioned (saute) student
    summaries, records, weights, tokens, values, per_problem = [], [], [], [], [], []
    family_sums: dict[str, dict[str, float]] = {}  # per family: problems, and sums over its problems and samples
    for start in range(0, len(problems), ev.batch_size):
        chunk = problems[start : start + ev.batch_size]
        prompts = [parts.task.prompt(p) for p in chunk]
        special = parts.task.add_special_tokens
        greedy = generate(policy, tok, prompts, 1, greedy_cfg, parts.device, special, track)
        greedy_correct = [parts.task.reward(t, p) for t, p in zip(greedy.texts, chunk, strict=True)]
        greedy_answers = [parts.task.extract(t) for t in greedy.texts]
        sampled = generate(policy, tok, prompts, ev.samples, sampled_cfg, parts.device, special, track)
        per_sample = [p for p in chunk for _ in range(ev.samples)]
        scored = score_rollout(sampled, per_sample, parts, cfg, policy=policy)
        s = batch_summary(scored)
        s["accuracy_greedy"] = sum(greedy_correct) / len(chunk)
        answers = [parts.task.extract(t) for t in sampled.texts]
        # completions from which no final answer could be read: a grader that misreads a model shows here
        s["unparsed_rate"] = sum(a is None for a in answers) / len(answers)
        s["unparsed_rate_greedy"] = sum(a is None for a in greedy_answers) / len(chunk)
        summaries.append(s)
        weights.append(len(chunk))
        tokens.append(int(scored.mask.sum()))
        values.append(scored.stats.value)
        per_problem.append(scored.task_reward.detach().cpu().double().view(len(chunk), ev.samples).mean(1))
        add_family_sums(family_sums, chunk, greedy_correct, answers, scored, ev.samples)
        if with_samples:
            records += sample_records(chunk, greedy.texts, greedy_correct, greedy_answers, sampled.texts, answers,
                                      scored, ev.samples)
    # chunks hold equal numbers of samples per problem: per-sample rates average by problems, per-token
    # means by generated tokens, maxima by max
    def pool(key: str) -> float:
        if key == "length_max":
            return max(s[key] for s in summaries)
        w = tokens if key in PER_TOKEN else weights
        return sum(s[key] * x for s, x in zip(summaries, w, strict=True)) / max(1, sum(w))

    report = {k: pool(k) for k in summaries[0]}
    # medians and p90s do not average across chunks: recompute them from every sample's value
    values = torch.cat(values).double()
    report["divergence_median"] = float(torch.quantile(values, 0.5))
    report["divergence_p90"] = float(torch.quantile(values, 0.9))
    report["accuracy_sampled"] = report.pop("reward")
    # this run's 95% interval on sampled accuracy, over its evaluation problems (cdistill report
    # adds seeds to it when a configuration has replicates)
    interval = rate_interval(torch.cat(per_problem).numpy())  # Wilson's at 0 or 1 correct: never zero width
    report["accuracy_sampled_low"], report["accuracy_sampled_high"] = interval.low, interval.high
    if split != "test":  # a test-split report reads as it always did; any other names its split
        report["split"] = split
    report.update(n_problems=len(problems), samples_per_problem=ev.samples, threshold=cfg.constraint.threshold,
                  cost=cfg.constraint.cost, kind=cfg.constraint.kind, extraction=parts.task.extraction)
    if any("@" in k for k in report):  # several budgets, measured: what each one is
        report["constraints"] = describe(cfg)
    if family_sums:  # the task tags its problems with families (task.family_field)
        report["families"] = family_report(family_sums, ev.samples)
    return report, records


PER_TOKEN = ("sampled_kl_per_token", "entropy")


def add_family_sums(sums: dict, problems, greedy_correct, answers, scored, samples: int) -> None:
    """Add a chunk's per-family totals to ``sums``: its problems, greedy successes and, for each per-sample
    metric, the sum over their sampled completions (problems without a family are not counted)."""
    if all(p.family is None for p in problems):
        return
    # each family metric is the mean of one of these over the family's sampled completions (the overall report's
    # definitions, metrics.per_sample)
    values = {("accuracy_sampled" if k == "reward" else k): v.detach().cpu().double()
              for k, v in per_sample(scored).items()}
    values["unparsed_rate"] = torch.tensor([a is None for a in answers], dtype=torch.float64)
    per_problem = {k: v.view(len(problems), samples).sum(1).tolist() for k, v in values.items()}
    for i, p in enumerate(problems):
        if p.family is None:
            continue
        fam = sums.setdefault(p.family, {"n_problems": 0, "accuracy_greedy": 0.0, **dict.fromkeys(per_problem, 0.0)})
        fam["n_problems"] += 1
        fam["accuracy_greedy"] += float(greedy_correct[i])
        for k, v in per_problem.items():
            fam[k] += v[i]


def family_report(sums: dict, samples: int) -> dict:
    """``{family: {n_problems, accuracy_sampled, accuracy_greedy, satisfaction_rate, ..., divergence_mean}}``:
    each a mean over the family's problems (greedy) or sampled completions; weighted by ``n_problems`` they
    average to the overall report's numbers (up to float rounding)."""
    out = {}
    for name in sorted(sums, key=family_order):
        fam = sums[name]
        n = fam["n_problems"]
        out[name] = {"n_problems": n, "accuracy_greedy": fam["accuracy_greedy"] / n,
                     **{k: v / (n * samples) for k, v in fam.items() if k not in ("n_problems", "accuracy_greedy")}}
    return out


def sample_records(problems, greedy_texts, greedy_correct, greedy_answers, sampled_texts, answers, scored,
                   samples: int) -> list[dict]:
    """One record per problem: its greedy answer and its sampled ones with their grades, extracted answers
    (null: none could be read), divergences C(y) and peaks (the largest running C_t: with ``peak`` a report
    can read the never-exceeded constraint at any budget). With several budgets, ``satisfied`` and
    ``never_exceeded`` are joint, and ``budgets`` holds each constraint's own."""
    joint = scored.joint
    return [{
        "question": p.question, **({"family": p.family} if p.family is not None else {}),
        "gold": p.gold, "greedy": greedy_texts[i], "greedy_correct": bool(greedy_correct[i]),
        "greedy_answer": greedy_answers[i],
        "samples": [{
            "text": sampled_texts[r], "answer": answers[r], "correct": bool(scored.task_reward[r] > 0),
            "divergence": float(scored.stats.value[r]), "peak": float(scored.stats.peak[r]),
            "satisfied": bool(joint.satisfied[r]), "never_exceeded": bool(joint.violation_step[r] < 0),
            **({"budgets": budgets_of(scored, r)} if scored.others else {}),
        } for r in range(i * samples, (i + 1) * samples)],
    } for i, p in enumerate(problems)]


def budgets_of(scored, r: int) -> dict:
    """Completion ``r``'s value, peak and satisfaction under each constraint, by name."""
    return {name: {"divergence": float(s.value[r]), "peak": float(s.peak[r]), "satisfied": bool(s.satisfied[r]),
                   "never_exceeded": bool(s.violation_step[r] < 0)}
            for name, s in zip(budget_names(scored), scored.all_stats(), strict=True)}


def write_eval(out_dir: Path, report: dict, records: list[dict]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "eval.json").write_text(json.dumps(report, indent=2))
    with (out_dir / "eval_samples.jsonl").open("w") as fh:
        for r in records:
            fh.write(json.dumps(r) + "\n")


ROWS = [
    ("accuracy (greedy)", "accuracy_greedy"), ("accuracy (sampled)", "accuracy_sampled"),
    ("divergence mean", "divergence_mean"), ("divergence median", "divergence_median"),
    ("divergence p90", "divergence_p90"), ("satisfied at the end", "satisfaction_rate"),
    ("success at the end", "success_rate"), ("never exceeded", "never_exceeded_rate"),
    ("success never exceeded", "success_never_exceeded_rate"), ("no answer extracted", "unparsed_rate"),
    ("KL per token (sampled)", "sampled_kl_per_token"), ("length mean", "length_mean"),
]


def constraint_label(report: dict) -> str:
    """The constraint a number is about, as every table row names it: ``C(y) = sum of logratio <= 10``."""
    return f"{report['kind']} of {report['cost']} <= {report['threshold']:g}"


def format_report(report: dict) -> str:
    head = (f"evaluation on {report['n_problems']} problems x {report['samples_per_problem']} samples, constraint "
            f"{constraint_label(report)}")
    if "constraints" in report:
        head += f" and {len(report['constraints']) - 1} more (rates: every budget met by the same sample)"
    lines = [head]
    for label, key in ROWS:
        if key in report:  # a report written before the metric existed lacks it
            lines.append(f"  {label:<24} {report[key]:>9.3f}")
            if key == "accuracy_sampled" and "accuracy_sampled_low" in report:
                lines[-1] += (f"   95% interval [{report['accuracy_sampled_low']:.3f}, "
                              f"{report['accuracy_sampled_high']:.3f}] (over problems)")
    for name, c in report.get("constraints", {}).items():  # several budgets: the rates above are joint
        lines.append(f"  budget {name!r} ({c['kind']} of {c['cost']} <= {c['threshold']:g}, teacher "
                     f"{c['teacher']!r}): mean C(y) {report[f'divergence_mean@{name}']:.2f}; satisfied "
                     f"{report[f'satisfaction_rate@{name}']:.3f}; never exceeded "
                     f"{report[f'never_exceeded_rate@{name}']:.3f}")
    for name, fam in report.get("families", {}).items():
        lines.append(f"  family {name!r} ({fam['n_problems']} problems): accuracy {fam['accuracy_sampled']:.3f} "
                     f"sampled, {fam['accuracy_greedy']:.3f} greedy; mean C(y) {fam['divergence_mean']:.2f}; "
                     f"satisfied {fam['satisfaction_rate']:.3f}")
    return "\n".join(lines)
