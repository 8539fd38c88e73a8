"""GPU smoke-and-speed check: a few steps of ``cmdp`` with Qwen2-shaped random-init models, no downloads.

    python scripts/gpu_smoke.py                    # Qwen2.5-1.5B-shaped student, 7B-shaped teacher, on CUDA
    python scripts/gpu_smoke.py --pair 0.5b-1.5b   # a smaller pair
    python scripts/gpu_smoke.py --dry-run          # the same script at toy size on the CPU (what CI runs)

Prints seconds per step split into generate / score / update, generated tokens per second and peak GPU
memory, from the run's own metrics.jsonl. Built for one call on a lent GPU machine (under 8 minutes for
the default: model construction ~1-2 min, 1 warm-up + 3 measured steps). Random-init models never emit
EOS, so every completion has exactly ``--new-tokens`` tokens. vLLM rollouts are not implemented in cdistill
yet; the script says so instead of timing something else.
"""

from __future__ import annotations

import argparse
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

    from cdistill.embedded import build_tokenizer

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
    p.add_argument("--dry-run", action="store_true", help="toy-sized models on the CPU, one measured step")
    args = p.parse_args()

    import torch
    from hydra import compose, initialize_config_dir

    from cdistill.train import train

    pair = "toy" if args.dry_run else args.pair
    if args.dry_run:
        args.prompts, args.samples, args.new_tokens, args.steps = 2, 2, 8, 1
    elif not torch.cuda.is_available():
        sys.exit("gpu_smoke: no CUDA device (use --dry-run for the CPU check)")
    s, t = PAIRS[pair]
    print(f"pair {pair}: student {s} ({params(SHAPES[s]) / 1e9:.2f} B, float32 + AdamW), teacher {t} "
          f"({params(SHAPES[t]) / 1e9:.2f} B, bfloat16); {args.prompts} prompts x {args.samples} completions x "
          f"{args.new_tokens} tokens; 1 warm-up + {args.steps} steps; backends: hf (vllm: not implemented)", flush=True)
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
    with tempfile.TemporaryDirectory() as tmp:
        overrides.append(f"paths.cache={tmp}/cache")
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose("config", overrides)
        run = Path(tmp) / "run"
        run.mkdir()
        if torch.cuda.is_available() and not args.dry_run:
            torch.cuda.reset_peak_memory_stats()
        train(cfg, run)
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"time_step"' in x][1:]
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() and not args.dry_run else None

    def m(key: str) -> float:
        return statistics.mean(r[key] for r in rows)

    tokens = m("length_mean") * batch
    print("\n| backend | step s | generate s | score s | update s | generated tokens/s | generate tokens/s | "
          "peak GPU GiB |\n|---|---|---|---|---|---|---|---|")
    print(f"| hf | {m('time_step'):.2f} | {m('time_generate'):.2f} | {m('time_score'):.2f} | {m('time_update'):.2f} "
          f"| {tokens / m('time_step'):.0f} | {tokens / m('time_generate'):.0f} | "
          f"{'-' if peak is None else f'{peak:.1f}'} |")


if __name__ == "__main__":
    main()
