#!/usr/bin/env python
"""What a teacher's known flaw costs (docs/tasks.md, "A teacher with a known flaw"): per family of the held-out
problems, the teacher's and the start student's accuracy, and the divergence a student pays to be right where
the teacher is wrong.

    .venv/bin/python scripts/flaw_numbers.py                       # +exp=flawed_teacher at its defaults
    .venv/bin/python scripts/flaw_numbers.py model.embedded.teacher.flaw=null   # the same families, correct teacher

Arguments are Hydra overrides on top of ``+exp=flawed_teacher``. The embedded models are built (or reused from
``paths.cache``) as ``cdistill train`` builds them; nothing is trained. Printed per family:

- teacher and start-student accuracy (sampled and greedy; ``eval.samples`` completions per problem, as at the
  start of a run);
- the start student's mean C(y) (the run's constraint: the summed log-ratio by default) over all its sampled
  completions, mean and median over its correct ones, and the share of its correct completions within the budget d;
- teacher-forced on every problem: the teacher's log-probability of the reference (correct) solution minus
  that of the solution its flaw implies (0 where the flaw changes nothing), and C(y) of the reference solution,
  sum over its tokens of log pi_student - log pi_teacher: what writing the right solution costs. (With a correct
  teacher, flaw=null, the gap is taken against the solution the first flaw, ``sells``, would write.)
"""

from __future__ import annotations

import statistics
import sys
from collections import defaultdict
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cdistill.eval.evaluate import evaluate  # noqa: E402
from cdistill.models.loading import build_components  # noqa: E402
from cdistill.models.sft import sft_batch  # noqa: E402
from cdistill.runtime import seed_everything  # noqa: E402
from cdistill.tasks.arith import FLAWS, flawed_solution  # noqa: E402


@torch.no_grad()
def completion_logprob(model, tokenizer, pairs: list[tuple[str, str]], device: str) -> torch.Tensor:
    """Sum of log-probabilities of each completion (with its end-of-sequence token) given its prompt."""
    ids, attn, labels = sft_batch(tokenizer, pairs, device)
    logp = torch.log_softmax(model(input_ids=ids, attention_mask=attn).logits[:, :-1].float(), -1)
    target = labels[:, 1:]
    picked = logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * (target != -100)).sum(1).cpu().double()


def teacher_forced(parts, flaw: str, batch: int = 64) -> dict[str, dict[str, list[float]]]:
    """Per family: the teacher's log-prob gap (reference minus ``flaw``'s solution) and C(y) of the reference."""
    out = defaultdict(lambda: defaultdict(list))
    problems = parts.task.test
    for i in range(0, len(problems), batch):
        chunk = problems[i : i + batch]
        prompts = [parts.task.prompt(p) for p in chunk]
        right = list(zip(prompts, [p.solution for p in chunk], strict=True))
        wrong = list(zip(prompts, [flawed_solution(flaw, p.question, p.solution) for p in chunk], strict=True))
        t_right = completion_logprob(parts.teacher, parts.tokenizer, right, parts.device)
        t_wrong = completion_logprob(parts.teacher, parts.tokenizer, wrong, parts.device)
        s_right = completion_logprob(parts.student, parts.tokenizer, right, parts.device)
        for p, tr, tw, sr in zip(chunk, t_right.tolist(), t_wrong.tolist(), s_right.tolist(), strict=True):
            out[p.family]["teacher_gap"].append(tr - tw)
            out[p.family]["reference_cost"].append(sr - tr)
    return out


def mean(xs) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def median(xs) -> float:
    return statistics.median(xs) if xs else float("nan")


def main(overrides: list[str]) -> None:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", ["+exp=flawed_teacher", *overrides])
    seed_everything(cfg.seed)
    parts = build_components(cfg)
    teacher, _ = evaluate(parts, cfg, policy=parts.teacher)
    student, records = evaluate(parts, cfg, with_samples=True)
    flaw = cfg.model.embedded.teacher.get("flaw")
    forced = teacher_forced(parts, flaw or next(iter(FLAWS)))  # a correct teacher: against the first flaw's rule
    d = cfg.constraint.threshold
    print(f"teacher flaw {flaw}, families by task.family_field="
          f"{cfg.task.family_field}, {student['n_problems']} problems x {student['samples_per_problem']} samples, "
          f"C(y) = {cfg.constraint.kind} of {cfg.constraint.cost}, d = {d:g}\n")
    cols = ["family", "problems", "teacher acc sampled / greedy", "start student acc sampled / greedy",
            "student mean C(y), all samples", "student C(y) of correct samples: mean / median (count)",
            "correct samples with C(y) <= d",
            "teacher log p(right) - log p(flawed solution)", "C(y) of the reference solution"]
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for name, fam in student["families"].items():
        correct = [s["divergence"] for r in records if r["family"] == name for s in r["samples"] if s["correct"]]
        t = teacher["families"][name]
        row = [name, str(fam["n_problems"]), f"{t['accuracy_sampled']:.3f} / {t['accuracy_greedy']:.3f}",
               f"{fam['accuracy_sampled']:.3f} / {fam['accuracy_greedy']:.3f}", f"{fam['divergence_mean']:.2f}",
               f"{mean(correct):.2f} / {median(correct):.2f} ({len(correct)})",
               f"{mean([c <= d for c in correct]):.3f}",
               f"{mean(forced[name]['teacher_gap']):.2f}", f"{mean(forced[name]['reference_cost']):.2f}"]
        print("| " + " | ".join(row) + " |")
    print(f"\noverall: teacher {teacher['accuracy_sampled']:.3f} / {teacher['accuracy_greedy']:.3f}, start student "
          f"{student['accuracy_sampled']:.3f} / {student['accuracy_greedy']:.3f}, student mean C(y) "
          f"{student['divergence_mean']:.2f}")


if __name__ == "__main__":
    main(sys.argv[1:])
