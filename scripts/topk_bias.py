#!/usr/bin/env python
"""How far below the exact divergence the top-k approximation of a served teacher lies (cdistill/objectives/topk.py).

A teacher behind an inference server returns only its k most likely tokens' log-probs per position, so the
``token_kl`` cost and GKD's generalised JSD are computed on k + 1 coarsened classes (the teacher's top k and the
rest): a lower bound on the exact value. A budget d is then checked against an underestimate, and a student can
spend more divergence than d says. This script measures the gap on the embedded pair, where the teacher's whole
distribution is known: the student samples completions of held-out prompts at the rollout temperature (as in
training), and at every valid completion position the exact KL(student ‖ teacher) and JSD(β) (student at the rollout
temperature, teacher at 1, from hidden states and output embeddings, as ``token_kl_cost`` does) are set beside the
coarsened ones for the teacher's top k, for each k.

    .venv/bin/python scripts/topk_bias.py                                  # 64 prompts x 4 samples, default pair
    .venv/bin/python scripts/topk_bias.py --tiny --n-prompts 8             # the test-sized models: a quick check
    .venv/bin/python scripts/topk_bias.py --student outputs/runs/<run>/student   # a trained student
    .venv/bin/python scripts/topk_bias.py rollout.temperature=0.7          # extra arguments: Hydra overrides

Printed (Markdown, stdout; also written with the command and commit to outputs/bench/topk_bias.md), per k:

- per token: the share of positions where the teacher's top k hold >= 0.99 of its mass; mean exact and coarsened
  KL and JSD, their difference (the bias, exact - approximate: never negative) and that as % of the exact mean;
- per completion (C(y) sums the costs, so the budget sees sums): the same on sums, the largest one completion's
  gap, and the share of completions that the approximation puts within the run's budget d while the exact sum
  exceeds it (d = constraint.threshold; the summed token KL has the summed log-ratio's expectation).

The lower bound (data-processing inequality) is checked at every position. It holds up to float32 rounding: the
teacher's mass outside a large top k (~1e-5) is 1 minus a sum of float32 probabilities, a few % off, and
``coarsened`` floors it at 1e-5; positions above the exact value by more than 1e-5 are counted (with the largest
excess), and the script fails after printing if any exceeds it by more than 0.01 nats (or misses it at k = V,
where they are equal).
"""

from __future__ import annotations

import argparse
import math
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cdistill.models.forward import completion_hidden  # noqa: E402
from cdistill.models.loading import build_components  # noqa: E402
from cdistill.objectives.chunking import logits_from_hidden  # noqa: E402
from cdistill.objectives.costs import token_jsd_cost, token_kl_cost  # noqa: E402
from cdistill.objectives.topk import TopK, coarsened, topk_token_jsd_cost, topk_token_kl_cost  # noqa: E402
from cdistill.rollout.sampling import generate, generation_config  # noqa: E402
from cdistill.runtime import seed_everything  # noqa: E402

KS = (1, 2, 5, 10, 20, 50, 100)
TOLERANCE = 1e-5  # an excess counted as a violation
FAIL_ABOVE = 0.01  # nats: beyond float32 rounding of the teacher's rest mass
FULL_MASS = 0.99


def log(msg: str) -> None:
    print(f"[topk_bias {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def config(args):
    overrides = [f"paths.cache={args.cache}", f"seed={args.seed}", *args.overrides]
    if args.tiny:
        sys.path.insert(0, str(ROOT / "tests"))
        from helpers import TINY  # the test suite's sizes: the real code path in seconds

        # the tiny task holds only task.n_test held-out problems: make room for the prompts asked for
        overrides = [*TINY, f"task.n_test={max(args.n_prompts, 12)}", *overrides]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides)


@torch.no_grad()
def measure_batch(parts, cfg, prompts: list[str], args, ks: list[int]) -> dict:
    """Per-position exact and coarsened divergences of one batch of the student's own completions."""
    gen = generation_config(parts.tokenizer, cfg.rollout.max_new_tokens, cfg.rollout.temperature, cfg.rollout.top_p,
                            False)
    seq = generate(parts.student, parts.tokenizer, prompts, args.samples, gen, parts.device,
                   parts.task.add_special_tokens).seq
    mask, temp, vocab, chunk = seq.completion_mask, cfg.rollout.temperature, parts.vocab, cfg.scoring.chunk
    hs, ht = completion_hidden(parts.student, seq), completion_hidden(parts.teacher, seq)
    ws, wt = parts.student.get_output_embeddings().weight, parts.teacher.get_output_embeddings().weight
    out = {"mask": mask.cpu(),
           "kl": token_kl_cost(hs, ws, ht, wt, mask, chunk, vocab, temp).cpu(),
           "jsd": token_jsd_cost(hs, ws, ht, wt, mask, args.beta, chunk, vocab, temp).cpu()}
    # what a server would return: the teacher's top k at temperature 1, from its whole distribution here
    rows = torch.log_softmax(logits_from_hidden(ht, wt, vocab), -1)
    ranked = torch.sort(rows, -1, descending=True)
    # for explaining a broken bound: both models' mass outside the top k, exactly and as the coarsening takes it
    s_rows = torch.log_softmax(logits_from_hidden(hs, ws, vocab, temp), -1).flatten(0, 1)
    for k in [*ks, rows.shape[-1]]:  # k = V as well: there the coarsening is exact, a check of the pipeline
        top = TopK(ranked.indices[..., :k].contiguous(), ranked.values[..., :k].contiguous())
        out[f"kl@{k}"] = topk_token_kl_cost(hs, ws, top, mask, chunk, vocab, temp).cpu()
        out[f"jsd@{k}"] = topk_token_jsd_cost(hs, ws, top, mask, args.beta, chunk, vocab, temp).cpu()
        out[f"mass@{k}"] = top.logp.exp().sum(-1).cpu()
        s_rest, t_rest = (c[:, -1].view(mask.shape).cpu()
                          for c in coarsened(s_rows, top.ids.flatten(0, 1), top.logp.flatten(0, 1)))
        out[f"s_rest@{k}"], out[f"t_rest@{k}"] = s_rest, t_rest
        out[f"t_tail@{k}"] = torch.logsumexp(ranked.values[..., k:].double(), -1).cpu()
    return out


def widen(x: torch.Tensor, width: int) -> torch.Tensor:
    """[B, T] → [B, width], zero (False) past T."""
    out = torch.zeros(x.shape[0], width, dtype=x.dtype)
    out[:, : x.shape[1]] = x
    return out


def pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f}" if whole else "nan"


def tables(res: dict, ks: list[int], vocab: int, d: float, beta: float) -> tuple[str, list[str]]:
    """The two Markdown tables (per token, per completion) and a line for each failed check."""
    mask = res["mask"]
    n_pos = int(mask.sum())
    failures = []
    tok = ["| k | teacher top-k mass >= 0.99 | mean top-k mass | KL exact | KL approx | KL bias | KL bias % "
           f"| JSD({beta:g}) exact | JSD approx | JSD bias | JSD bias % | bound violations |", "|" + "---|" * 12]
    seq = ["| k | sum KL exact | sum KL approx | bias | bias % | largest gap | approx <= d < exact "
           "| sum JSD exact | sum JSD approx | bias | bias % | largest gap |", "|" + "---|" * 12]
    for k in ks:
        row, srow = [str(k)], [str(k)]
        mass = res[f"mass@{k}"][mask]
        row += [f"{(mass >= FULL_MASS).float().mean():.3f}", f"{mass.mean():.4f}"]
        violations, largest = 0, 0.0
        for name in ("kl", "jsd"):
            exact, approx = res[name], res[f"{name}@{k}"]
            excess = (approx - exact)[mask]
            above = int((excess > TOLERANCE).sum())
            violations += above
            largest = max(largest, float(excess.max()) if excess.numel() else 0.0)
            if above and excess.max() > FAIL_ABOVE:
                at = (approx - exact).masked_fill(~mask, -torch.inf).flatten().argmax()
                t_tail, t_rest, s_rest = (res[f"{key}@{k}"].flatten()[at].item()
                                          for key in ("t_tail", "t_rest", "s_rest"))
                failures.append(f"{name} k={k}: approximation above the exact value at {above} of {n_pos} positions, "
                                f"by up to {excess.max():.3g} nats; there the teacher's mass outside its top k is "
                                f"{math.exp(t_tail):.3g} (log {t_tail:.3f}), taken as {math.exp(t_rest):.3g} "
                                f"(log {t_rest:.3f}) by the coarsening; the student's is {math.exp(s_rest):.3g}")
            e, a = exact[mask].double().mean().item(), approx[mask].double().mean().item()
            row += [f"{e:.4f}", f"{a:.4f}", f"{e - a:.4f}", pct(e - a, e)]
            es, as_ = exact.double().sum(1), approx.double().sum(1)
            gap = es - as_
            srow += [f"{es.mean():.3f}", f"{as_.mean():.3f}", f"{gap.mean():.3f}", pct(gap.mean(), es.mean()),
                     f"{gap.max():.3f}"]
            if name == "kl":
                srow.append(f"{((as_ <= d) & (es > d)).double().mean():.3f}")
        row.append(f"{violations} (max {largest:.1e})" if violations else "0")
        tok.append("| " + " | ".join(row) + " |")
        seq.append("| " + " | ".join(srow) + " |")
    for name in ("kl", "jsd"):
        worst = (res[f"{name}@{vocab}"] - res[name])[mask].abs().max().item() if n_pos else 0.0
        log(f"k = V = {vocab}: {name} max |approx - exact| = {worst:.2e}")
        if worst > 1e-4:
            failures.append(f"{name} k=V: the coarsening differs from the exact value by {worst:.3g}")
    text = ("Per token (means over all valid completion positions):\n\n" + "\n".join(tok)
            + f"\n\nPer completion (sums over its tokens, as C(y) = sum of costs; d = {d:g}):\n\n" + "\n".join(seq))
    return text, failures


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n-prompts", type=int, default=64, help="held-out prompts (task.test, in order)")
    p.add_argument("--samples", type=int, default=4, help="student completions per prompt")
    p.add_argument("--ks", default=",".join(map(str, KS)), help="comma-separated k (capped at the vocabulary)")
    p.add_argument("--beta", type=float, default=0.5, help="GKD's generalised JSD(beta)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tiny", action="store_true", help="the test suite's tiny models (tests/helpers.py TINY)")
    p.add_argument("--student", default=None, help="a trained student (a run's student/ dir, HF format)")
    p.add_argument("--batch", type=int, default=16, help="prompts per generate call")
    p.add_argument("--cache", default=str(ROOT / "outputs" / "cache"), help="paths.cache: the embedded models")
    p.add_argument("--out", default=None,
                   help="Markdown report (default outputs/bench/topk_bias.md, topk_bias_tiny.md with --tiny)")
    p.add_argument("overrides", nargs="*", help="Hydra overrides on the default config")
    args = p.parse_args()

    cfg = config(args)
    if cfg.model.teacher.get("backend", "local") != "local":
        sys.exit("topk_bias: the exact divergence needs the teacher's whole distribution: model.teacher.backend=local")
    seed_everything(args.seed)
    t0 = time.time()
    log("building / loading the models (a first build of the embedded pair takes minutes)")
    parts = build_components(cfg, student_path=args.student)
    parts.student.eval()
    vocab_rows = parts.vocab
    ks = sorted({min(int(k), vocab_rows) for k in args.ks.split(",")})
    problems = parts.task.test[: args.n_prompts]
    if len(problems) < args.n_prompts:
        log(f"only {len(problems)} held-out prompts in the task; measuring those")
    log(f"models ready in {time.time() - t0:.0f}s on {parts.device}; vocabulary {vocab_rows}, "
        f"{len(problems)} prompts x {args.samples} samples, ks {ks}")

    batches = []
    for i in range(0, len(problems), args.batch):
        prompts = [parts.task.prompt(q) for q in problems[i : i + args.batch]]
        batches.append(measure_batch(parts, cfg, prompts, args, ks))
        log(f"{min(i + args.batch, len(problems))}/{len(problems)} prompts ({time.time() - t0:.0f}s)")
    # completions differ in length between batches: pad the time axis before stacking rows
    width = max(b["mask"].shape[1] for b in batches)
    res = {key: torch.cat([widen(b[key], width) for b in batches]) for key in batches[0]}

    mask = res["mask"]
    body, failures = tables(res, ks, vocab_rows, cfg.constraint.threshold, args.beta)
    student = args.student or cfg.model.student.name_or_path
    head = (f"Top-k approximation of the token-level divergences (cdistill/objectives/topk.py) against the exact "
            f"values: student {student} vs teacher {cfg.model.teacher.name_or_path}"
            f"{' (tiny test sizes)' if args.tiny else ''}, vocabulary {vocab_rows}; {mask.shape[0]} student "
            f"completions ({len(problems)} held-out prompts x {args.samples}) at rollout temperature "
            f"{cfg.rollout.temperature:g}, max {cfg.rollout.max_new_tokens} tokens, {int(mask.sum())} positions "
            f"(mean length {mask.sum(1).double().mean():.1f}); teacher at temperature 1; seed {args.seed}. "
            "Bias = exact - approximate (>= 0: a lower bound).")
    text = head + "\n\n" + body
    print(text)

    out = Path(args.out or ROOT / "outputs" / "bench" / ("topk_bias_tiny.md" if args.tiny else "topk_bias.md"))
    out.parent.mkdir(parents=True, exist_ok=True)
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    command = shlex.join(["python", "scripts/topk_bias.py", *sys.argv[1:]])
    check = (f"Lower bound violated (beyond {FAIL_ABOVE:g} nats):\n\n" + "\n".join(f"- {f}" for f in failures)
             if failures else f"Lower bound held at every position for every k up to {FAIL_ABOVE:g} nats (positions "
             f"above the exact value by more than {TOLERANCE:g}: the last column).")
    out.write_text(f"# Top-k divergence bias\n\n```\n{command}\n```\n\ncommit {rev.stdout.strip() or 'unknown'}, "
                   f"{time.strftime('%Y-%m-%d')}\n\n{text}\n\n{check}\n")
    log(f"written {out} ({time.time() - t0:.0f}s)")
    if failures:
        sys.exit("topk_bias: lower-bound check failed:\n" + "\n".join(failures))
    log(f"lower bound held at all {int(mask.sum())} positions for every k up to {FAIL_ABOVE:g} nats")


if __name__ == "__main__":
    main()
