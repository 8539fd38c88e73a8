"""GPU smoke-and-speed check: a few steps of ``cmdp`` with Qwen2-shaped random-init models, no downloads.

    python scripts/gpu_smoke.py                    # Qwen2.5-1.5B-shaped student, 7B-shaped teacher, on CUDA
    python scripts/gpu_smoke.py --pair 0.5b-1.5b   # a smaller pair
    python scripts/gpu_smoke.py --backends hf      # only the transformers backend
    python scripts/gpu_smoke.py --dry-run          # the same script at toy size on the CPU (what CI runs)

Runs each rollout backend in turn (``hf``; ``vllm`` when vLLM is importable) and prints seconds per step split
into generate / score / update, generated tokens per second and peak GPU memory, from each run's own
metrics.jsonl, plus vLLM's log-prob gap to the trainer. Built for one call on a lent GPU machine (under 8
minutes for the default: model construction ~1-2 min, vLLM's engine start ~1 min, 1 warm-up + 3 measured steps
per backend). Random-init models never emit EOS, so every completion has exactly ``--new-tokens`` tokens.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# (hidden, intermediate, layers, heads, kv heads, vocab, tied embeddings), Qwen2.5 configs
SHAPES = {
    "0.5b": (896, 4864, 24, 14, 2, 151936, True),
    "1.5b": (1536, 8960, 28, 12, 2, 151936, True),
    "7b": (3584, 18944, 28, 28, 4, 152064, False),
    "toy": (64, 128, 2, 4, 2, 512, True),
}
PAIRS = {"1.5b-7b": ("1.5b", "7b"), "0.5b-1.5b": ("0.5b", "1.5b"), "toy": ("toy", "toy")}


def params(shape) -> int:
    h, i, n, heads, kv, v, tied = shape
    attn = h * h * 2 + 2 * h * (h // heads) * kv
    return n * (attn + 3 * h * i) + v * h * (1 if tied else 2)


def build(out: Path, pair: str) -> dict:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from cdistill.models.embedded import build_tokenizer

    if (out / "done").is_file():
        return {role: out / role for role in ("student", "teacher")}
    roles = dict(zip(("student", "teacher"), PAIRS[pair], strict=True))
    vocab = max(SHAPES[s][5] for s in roles.values())
    tok = build_tokenizer([f"Question: {a} + {b}\nAnswer:\n{a + b}" for a in range(50) for b in range(50)], 400)
    tok.add_tokens([f"<extra_{i}>" for i in range(vocab - len(tok))])  # every id the models can sample decodes
    paths = {}
    for seed, (role, name) in enumerate(roles.items()):
        h, i, n, heads, kv, v, tied = SHAPES[name]
        torch.manual_seed(seed)
        cfg = Qwen2Config(vocab_size=v, hidden_size=h, intermediate_size=i, num_hidden_layers=n,
                          num_attention_heads=heads, num_key_value_heads=kv, tie_word_embeddings=tied,
                          max_position_embeddings=4096, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        t = time.time()
        with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
            model = Qwen2ForCausalLM(cfg).to(torch.bfloat16)
        paths[role] = out / role
        model.save_pretrained(paths[role])
        tok.save_pretrained(paths[role])
        print(f"  built the {name} {role} ({params(SHAPES[name]) / 1e9:.2f} B parameters) in {time.time() - t:.0f} s",
              flush=True)
        del model
    (out / "done").write_text("ok")
    return paths


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pair", choices=[k for k in PAIRS if k != "toy"], default="1.5b-7b")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--steps", type=int, default=3, help="measured steps (after one warm-up step)")
    p.add_argument("--models", default=str(ROOT / "outputs" / "gpu_smoke"))
    p.add_argument("--backends", default="hf,vllm", help="comma-separated; vllm is skipped when not importable")
    p.add_argument("--dry-run", action="store_true", help="toy-sized models on the CPU, one measured step")
    args = p.parse_args()
    backends = [b for b in args.backends.split(",") if b]
    if "vllm" in backends and (args.dry_run or importlib.util.find_spec("vllm") is None):
        print("vllm: skipped (" + ("CPU dry run" if args.dry_run else "not installed: pip install 'cdistill[vllm]'")
              + ")", flush=True)
        backends.remove("vllm")

    import torch


    pair = "toy" if args.dry_run else args.pair
    if args.dry_run:
        args.prompts, args.samples, args.new_tokens, args.steps = 2, 2, 8, 1
    elif not torch.cuda.is_available():
        sys.exit("gpu_smoke: no CUDA device (use --dry-run for the CPU check)")
    s, t = PAIRS[pair]
    print(f"pair {pair}: student {s} ({params(SHAPES[s]) / 1e9:.2f} B, float32 + AdamW), teacher {t} "
          f"({params(SHAPES[t]) / 1e9:.2f} B, bfloat16); {args.prompts} prompts x {args.samples} completions x "
          f"{args.new_tokens} tokens; 1 warm-up + {args.steps} steps; backends: {', '.join(backends)}", flush=True)
    paths = build(Path(args.models) / pair, pair)
    batch = args.prompts * args.samples
    overrides = [
        f"model.student.name_or_path={paths['student']}", f"model.teacher.name_or_path={paths['teacher']}",
        "model.student.dtype=float32", "model.teacher.dtype=bfloat16",
        f"rollout.prompts_per_step={args.prompts}", f"rollout.samples_per_prompt={args.samples}",
        f"rollout.max_new_tokens={args.new_tokens}", f"optim.steps={args.steps + 1}", "optim.lr=1e-6",
        f"optim.micro_batch={batch}", f"scoring.micro_batch={batch}", "eval.at_start=false", "eval.n_problems=1",
        "eval.samples=1", "eval.batch_size=1", "logging.wandb.enabled=false", "save_student=false",
        f"autocast={'null' if args.dry_run else 'bfloat16'}", f"device={'cpu' if args.dry_run else 'cuda'}",
    ]
    table = []
    for backend in backends:
        table.append(run_backend(backend, overrides, batch, args.dry_run))
    print("\n| backend | step s | generate s | score s | update s | generated tokens/s | generate tokens/s | "
          "peak GPU GiB | engine log-prob gap |\n|---|---|---|---|---|---|---|---|---|")
    for row in table:
        print(row)


def run_backend(backend: str, overrides: list[str], batch: int, dry_run: bool) -> str:
    import torch
    from hydra import compose, initialize_config_dir

    from cdistill.train import train

    extra = [f"rollout.backend={backend}"]
    if backend == "vllm":  # the engine samples in bfloat16 (the trainer's float32 log-probs differ: corrected)
        extra += ["rollout.vllm.dtype=bfloat16", "rollout.vllm.gpu_memory_utilization=0.35"]
    with tempfile.TemporaryDirectory() as tmp:
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose("config", [*overrides, *extra, f"paths.cache={tmp}/cache"])
        run = Path(tmp) / "run"
        run.mkdir()
        gpu = torch.cuda.is_available() and not dry_run
        if gpu:
            torch.cuda.reset_peak_memory_stats()
        t = time.time()
        train(cfg, run)
        print(f"  {backend}: {time.time() - t:.0f} s including model loading and evaluation", flush=True)
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"time_step"' in x][1:]
    peak = torch.cuda.max_memory_allocated() / 2**30 if gpu else None

    def m(key: str) -> float:
        return statistics.mean(r[key] for r in rows)

    tokens = m("length_mean") * batch
    gap = f"{m('sampler_logp_abs_diff'):.4f}" if "sampler_logp_abs_diff" in rows[0] else "-"
    return (f"| {backend} | {m('time_step'):.2f} | {m('time_generate'):.2f} | {m('time_score'):.2f} | "
            f"{m('time_update'):.2f} | {tokens / m('time_step'):.0f} | {tokens / m('time_generate'):.0f} | "
            f"{'-' if peak is None else f'{peak:.1f}'} | {gap} |")


if __name__ == "__main__":
    main()
