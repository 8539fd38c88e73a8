"""The embedded default experiment's models: a tokenizer, a teacher and a smaller student, made offline.

Everything is built from the embedded arithmetic task on first use and cached under
``<cache_dir>/embedded-<hash>/``, where the hash covers every setting that shapes the result (the
recipe, the task, the code version), so a second run reuses the models and a changed recipe rebuilds
them. A build is written to a temporary folder and renamed into place when complete, so an interrupted
build never leaves a half-written cache behind.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

log = logging.getLogger(__name__)

# bump when the build code or the embedded task's generator changes what it produces (2: split by computation)
RECIPE_VERSION = 2
SPECIAL = {"pad": "<|pad|>", "eos": "<|eos|>"}


def cache_key(*parts) -> str:
    payload = [RECIPE_VERSION] + [OmegaConf.to_container(p, resolve=True) if OmegaConf.is_config(p) else p
                                  for p in parts]
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def build_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE (GPT-2 style) trained on the task's text, digits always split one by one."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=SPECIAL["pad"], eos_token=SPECIAL["eos"])


def tiny_llama(tokenizer, size, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=size.hidden, intermediate_size=size.intermediate,
        num_hidden_layers=size.layers, num_attention_heads=size.heads, num_key_value_heads=size.heads,
        max_position_embeddings=size.max_positions, tie_word_embeddings=size.get("tie_embeddings", True),
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
    )
    return LlamaForCausalLM(cfg)


def _atomic_build(root: Path, make) -> Path:
    """Run ``make(tmp_dir)`` and rename the result to ``root``; reuse ``root`` if it is already complete."""
    if (root / "build.json").is_file():
        log.info("embedded: reusing %s", root)
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=root.parent))
    try:
        info = make(tmp)
        (tmp / "build.json").write_text(json.dumps(info, indent=2))
        try:
            os.rename(tmp, root)
        except OSError:  # another process finished the same build first: theirs is as good as ours
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def ensure_built(recipe, task_cfg, cache_dir: str | Path, role: str) -> Path:
    """Directory of the embedded ``role`` ("teacher" or "student"), built on first use.

    Tokenizer, teacher and student are cached separately, each keyed by what shapes it: changing the
    student's recipe reuses the teacher.
    """
    from cdistill.models.sft import train_sft
    from cdistill.tasks import arith, build_task

    cache = Path(cache_dir)
    # the models learn from their own draw of problems (recipe.sft_problems), so how many problems an RL
    # run draws (task.n_train) must not rebuild them; everything else about the task shapes them, except how
    # evaluation groups the test problems (task.family_field)
    data_cfg = OmegaConf.merge(task_cfg, {"n_train": recipe.sft_problems})
    # which validation problems are evaluated does not shape the models; which computations are held out for
    # validation does (they are never trained on), and a task without a validation split keeps its old key
    shaping_data = without(without(data_cfg, "family_field"), "n_validation")
    if not shaping_data.get("validation_fraction"):
        shaping_data = without(shaping_data, "validation_fraction")
    r = recipe[role]
    # a teacher with its own tokenizer (model.embedded.teacher.tokenizer: another vocabulary size on the same texts,
    # docs/methods.md "Teachers with another tokenizer"); without one, every key stays as it was
    tok_recipe = OmegaConf.merge(recipe.tokenizer, r.tokenizer) if r.get("tokenizer") is not None else recipe.tokenizer
    tok_key = cache_key(tok_recipe, shaping_data)
    flaw = r.get("flaw")
    if flaw is not None:
        check_flaw(flaw, task_cfg, role)
    task = None

    def pairs(flaw: str | None = None):
        nonlocal task
        task = task or build_task(data_cfg)
        if flaw is None:
            return [(task.prompt(p), p.solution) for p in task.train]
        # a misread step turns a training computation into another (7+7-5 read as 7+7+5), which may be a held-out
        # one: its worked solution would then be a test problem's, so those problems are left out of what the
        # flawed teacher learns from (tests/test_families.py measures the split on what is left)
        seed, fraction = data_cfg.seed, data_cfg.get("held_out_fraction", arith.HELD_OUT_FRACTION)
        vfraction = data_cfg.get("validation_fraction", arith.VALIDATION_FRACTION)
        flawed = [(p, arith.flawed_solution(flaw, p.question, p.solution)) for p in task.train]
        return [(task.prompt(p), s) for p, s in flawed
                if not arith.is_reserved(arith.computation({"answer": s}), seed, fraction, vfraction)]

    def make_tokenizer(out: Path) -> dict:
        tok = build_tokenizer([a + b for a, b in pairs()], tok_recipe.vocab_size)
        tok.save_pretrained(out)
        return {"vocab": len(tok)}

    tok_dir = _atomic_build(cache / f"tokenizer-{tok_key}", make_tokenizer)
    # the recipe as it was before flaws existed when there is none: the correct teacher keeps its cache key
    # (a flawed teacher's key also names the version of how its data is drawn: 2 leaves out held-out computations)
    shaping = OmegaConf.create({**OmegaConf.to_container(r, resolve=True), "flaw_data": 2}) if flaw is not None \
        else without(r, "flaw")

    def make_model(out: Path) -> dict:
        from transformers import AutoTokenizer

        print(f"building the embedded {role}{f' with the flaw {flaw!r}' if flaw else ''} (once; cached in {cache}) "
              "...", flush=True)
        tok = AutoTokenizer.from_pretrained(tok_dir)  # learnt from the correct solutions (the teacher's own or shared)
        model = tiny_llama(tok, r.size, recipe.seed)
        t = time.time()
        losses = train_sft(model, tok, pairs(flaw), r.steps, r.lr, r.batch_size, seed=recipe.seed, warmup=r.warmup,
                           desc=f"embedded {role}", label_smoothing=r.get("label_smoothing", 0.0))
        model.save_pretrained(out)
        tok.save_pretrained(out)
        (out / "recipe.yaml").write_text(OmegaConf.to_yaml(shaping))
        tail = losses[-20:]
        return {"role": role, "parameters": sum(p.numel() for p in model.parameters()), "sft_steps": r.steps,
                "final_loss": sum(tail) / len(tail), "seconds": time.time() - t, **({"flaw": flaw} if flaw else {})}

    return _atomic_build(cache / f"{role}-{cache_key(tok_key, shaping, recipe.seed)}", make_model)


def without(cfg, key: str):
    """``cfg`` (a DictConfig) without ``key``: a setting that does not shape what is built stays out of its key."""
    out = OmegaConf.to_container(cfg, resolve=True)
    out.pop(key, None)
    return OmegaConf.create(out)


def check_flaw(flaw: str, task_cfg, role: str) -> None:
    """A flaw is a wrong rule of the embedded arithmetic task, taught to the teacher only."""
    from cdistill.tasks import arith

    if role != "teacher":
        raise ValueError(f"model.embedded.{role}.flaw: only the teacher can be given a flaw")
    if flaw not in arith.FLAWS:
        raise ValueError(f"unknown model.embedded.teacher.flaw {flaw!r}; available: {', '.join(arith.FLAWS)} (or null)")
    if task_cfg.source != "embedded":
        raise ValueError(f"model.embedded.teacher.flaw={flaw} is a rule of the embedded arithmetic task; task "
                         f"{task_cfg.name!r} is not it (use task=arith, or flaw=null)")


def truncated_teacher(teacher_path: str, gguf_file: str | None, keep_layers: int, cache_dir: str | Path) -> Path:
    """The teacher cut to its first ``keep_layers`` decoder layers, saved in Hugging Face format (cached)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kw = {"gguf_file": gguf_file} if gguf_file else {}

    def make(out: Path) -> dict:
        print(f"building the student from the teacher's first {keep_layers} layers (once; cached) ...", flush=True)
        model = AutoModelForCausalLM.from_pretrained(teacher_path, dtype=torch.float32, **kw)
        layers = model.get_decoder().layers
        if not 0 < keep_layers <= len(layers):
            raise ValueError(f"model.student.keep_layers must be in 1..{len(layers)}, got {keep_layers}")
        # GGUF weights arrive dequantised, but the model remembers the quantizer and refuses to save: the
        # truncated student is a plain float32 model
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.get_decoder().layers = layers[:keep_layers]
        model.config.num_hidden_layers = keep_layers
        if getattr(model.config, "layer_types", None):
            model.config.layer_types = model.config.layer_types[:keep_layers]
        model.save_pretrained(out)
        AutoTokenizer.from_pretrained(teacher_path, **kw).save_pretrained(out)
        return {"teacher": teacher_path, "gguf_file": gguf_file, "keep_layers": keep_layers,
                "parameters": sum(p.numel() for p in model.parameters())}

    return _atomic_build(Path(cache_dir) / f"truncated-{cache_key(teacher_path, gguf_file, keep_layers)}", make)
