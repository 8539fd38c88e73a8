"""Held-out evaluation: accuracy (greedy and sampled), divergence, constraint satisfaction, success."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from cdistill.eval.metrics import batch_summary
from cdistill.rollout.sampling import generate, generation_config
from cdistill.rollout.sources import budget_tracking
from cdistill.runtime import autocast
from cdistill.scoring import score_rollout


def evaluate(parts, cfg, n_problems: int | None = None, with_samples: bool = False, policy=None):
    """Report dict (and, with ``with_samples``, one record per problem) for the held-out split.

    The constraint metrics are measured on sampled completions (the policy's own distribution, which
    the budget constrains); greedy decoding gives a second accuracy. Sampling uses its own seed
    (``cfg.seed``) on a forked RNG: the same weights always give the same report, and evaluating in the
    middle of training does not shift the training run's random stream. ``policy`` (default: the
    student) is the model that answers; the teacher as policy gives the reference accuracy.
    """
    devices = [torch.cuda.current_device()] if parts.device.startswith("cuda") else []
    with torch.random.fork_rng(devices=devices), autocast(cfg, parts.device):
        torch.manual_seed(cfg.seed)
        return _evaluate(parts, cfg, n_problems, with_samples, policy or parts.student)


def _evaluate(parts, cfg, n_problems, with_samples, policy):
    problems = parts.task.test[: n_problems or cfg.eval.n_problems]
    tok, ev = parts.tokenizer, cfg.eval
    sampled_cfg = generation_config(tok, cfg.rollout.max_new_tokens, cfg.rollout.temperature, cfg.rollout.top_p, False)
    greedy_cfg = generation_config(tok, cfg.rollout.max_new_tokens, 1.0, 1.0, True)
    track = budget_tracking(parts, cfg)  # used only by a budget-conditioned (saute) student
    summaries, records, weights, tokens, values = [], [], [], [], []
    for start in range(0, len(problems), ev.batch_size):
        chunk = problems[start : start + ev.batch_size]
        prompts = [parts.task.prompt(p) for p in chunk]
        special = parts.task.add_special_tokens
        greedy = generate(policy, tok, prompts, 1, greedy_cfg, parts.device, special, track)
        greedy_correct = [parts.task.reward(t, p) for t, p in zip(greedy.texts, chunk, strict=True)]
        sampled = generate(policy, tok, prompts, ev.samples, sampled_cfg, parts.device, special, track)
        per_sample = [p for p in chunk for _ in range(ev.samples)]
        scored = score_rollout(sampled, per_sample, parts, cfg, policy=policy)
        s = batch_summary(scored)
        s["accuracy_greedy"] = sum(greedy_correct) / len(chunk)
        summaries.append(s)
        weights.append(len(chunk))
        tokens.append(int(scored.mask.sum()))
        values.append(scored.stats.value)
        if with_samples:
            records += sample_records(chunk, greedy.texts, greedy_correct, sampled.texts, scored, ev.samples)
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
    report.update(n_problems=len(problems), samples_per_problem=ev.samples, threshold=cfg.constraint.threshold,
                  cost=cfg.constraint.cost, kind=cfg.constraint.kind)
    return report, records


PER_TOKEN = ("sampled_kl_per_token", "entropy")


def sample_records(problems, greedy_texts, greedy_correct, sampled_texts, scored, samples: int) -> list[dict]:
    """One record per problem: its greedy answer and its sampled ones with their grades and divergences."""
    return [{
        "question": p.question, "gold": p.gold, "greedy": greedy_texts[i], "greedy_correct": bool(greedy_correct[i]),
        "samples": [{
            "text": sampled_texts[r], "correct": bool(scored.task_reward[r] > 0),
            "divergence": float(scored.stats.value[r]), "satisfied": bool(scored.stats.satisfied[r]),
        } for r in range(i * samples, (i + 1) * samples)],
    } for i, p in enumerate(problems)]


def write_eval(out_dir: Path, report: dict, records: list[dict]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "eval.json").write_text(json.dumps(report, indent=2))
    with (out_dir / "eval_samples.jsonl").open("w") as fh:
        for r in records:
            fh.write(json.dumps(r) + "\n")


ROWS = [
    ("accuracy (greedy)", "accuracy_greedy"), ("accuracy (sampled)", "accuracy_sampled"),
    ("divergence mean", "divergence_mean"), ("divergence median", "divergence_median"),
    ("divergence p90", "divergence_p90"), ("satisfaction rate", "satisfaction_rate"),
    ("success rate", "success_rate"), ("KL per token (sampled)", "sampled_kl_per_token"),
    ("length mean", "length_mean"),
]


def format_report(report: dict) -> str:
    head = (f"evaluation on {report['n_problems']} problems, threshold d={report['threshold']} "
            f"({report['cost']}, {report['kind']})")
    lines = [head] + [f"  {label:<24} {report[key]:>9.3f}" for label, key in ROWS]
    return "\n".join(lines)
