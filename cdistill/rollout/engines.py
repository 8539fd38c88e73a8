"""Rollout backends: which engine samples the student's training completions (``rollout.backend``).

``hf`` samples with transformers' ``generate`` inside the training process (``rollout.sampling``). ``vllm``
samples in a vLLM engine colocated on the training GPU: the engine holds its own copy of the student's
weights, refreshed from the trainer before the first rollout after every optimiser step, and returns the
log-prob it sampled each token with, so that the update can correct for the numerical mismatch between the
engines (``rollout.importance_correction``).

Everything here but ``VLLMEngine`` talks to an ``Engine``: two methods, ``generate`` and ``load_weights``.
The tests drive the same ``EngineSampler`` with a fake engine on CPU; ``VLLMEngine`` is the thin adapter to
``vllm.LLM`` (vLLM 0.33, its offline ``LLM`` API, the way TRL's colocate mode drives it).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

import torch

from cdistill.models.forward import Sequences
from cdistill.objectives.masks import completion_mask
from cdistill.rollout.sampling import Rollout

BACKENDS = ("hf", "vllm")


@dataclass(frozen=True)
class SamplingSpec:
    """The sampling settings both backends apply: temperature and top-p over the full vocabulary (no top-k,
    no repetition penalty), stop at the tokenizer's EOS (kept in the completion), at most ``max_tokens``."""

    n: int
    max_tokens: int
    temperature: float
    top_p: float
    greedy: bool
    eos_token_id: int

    @classmethod
    def from_generation_config(cls, gen, n: int) -> SamplingSpec:
        """The spec of a ``rollout.sampling.generation_config``: the HF backend's settings, read, not re-derived."""
        return cls(n=n, max_tokens=gen.max_new_tokens, temperature=gen.temperature if gen.do_sample else 1.0,
                   top_p=gen.top_p if gen.do_sample else 1.0, greedy=not gen.do_sample, eos_token_id=gen.eos_token_id)


@dataclass
class Sample:
    token_ids: list[int]  # the completion, EOS included when it stopped there
    logprobs: list[float]  # the engine's log-prob of each sampled token (at the sampling temperature)


class Engine(Protocol):
    def generate(self, prompts: list[list[int]], spec: SamplingSpec) -> list[list[Sample]]:
        """``spec.n`` samples of each prompt (token ids, no padding), in prompt order."""

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Replace the engine's weights by these (Hugging Face parameter names)."""


def hf_weights(model) -> Iterator[tuple[str, torch.Tensor]]:
    """The student's weights under their Hugging Face names, one tensor at a time (no second full copy).

    A LoRA student's layers are given merged, W + ΔW computed out of place: merging into the model and
    unmerging after would leave rounding error in the frozen base weights at every push. Adapter tensors and
    peft's name prefixes are left out. Sharded (FSDP2) parameters are gathered one at a time. A budget
    input (``saute``) is not part of the model's weights.
    """
    lora = {name: m for name, m in model.named_modules() if hasattr(m, "get_delta_weight") and hasattr(m, "base_layer")}
    for name, p in model.named_parameters():
        if "lora_" in name or name.startswith("budget_input"):
            continue
        t = p.detach()
        if hasattr(t, "full_tensor"):  # a DTensor shard under FSDP2
            t = t.full_tensor()
        layer = lora.get(name.removesuffix(".base_layer.weight"))
        if layer is not None and name.endswith(".base_layer.weight") and not layer.merged:
            for adapter in layer.active_adapters:
                if adapter in layer.lora_A:
                    t = t + layer.get_delta_weight(adapter).to(t.dtype)
        if lora:
            name = name.removeprefix("base_model.model.").replace(".base_layer", "")
        yield name, t


class EngineSampler:
    """Student rollouts from an ``Engine``, laid out exactly as the HF backend lays them out."""

    def __init__(self, engine: Engine, tokenizer, device):
        self.engine, self.tokenizer, self.device = engine, tokenizer, device
        self.stale = True  # the engine's weights are not the student's until the first push

    def weights_changed(self) -> None:
        """Called after every optimiser step: the next rollout first pushes the student's weights."""
        self.stale = True

    @torch.no_grad()
    def sample(self, student, prompts: list[str], n: int, gen, add_special_tokens: bool = True) -> Rollout:
        if self.stale:
            self.engine.load_weights(hf_weights(student))
            self.stale = False
        spec = SamplingSpec.from_generation_config(gen, n)
        tok = self.tokenizer
        # the same tokenisation as the HF backend, whose left-padded prompt tensor is reused below
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=add_special_tokens)
        unpadded = [ids[m.bool()].tolist() for ids, m in zip(enc.input_ids, enc.attention_mask, strict=True)]
        outputs = self.engine.generate(unpadded, spec)
        if len(outputs) != len(prompts) or any(len(o) != n for o in outputs):
            raise RuntimeError(f"the rollout engine returned {[len(o) for o in outputs]} samples for "
                               f"{len(prompts)} prompts × {n}")
        samples = [s for per_prompt in outputs for s in per_prompt]
        t = max(1, max(len(s.token_ids) for s in samples))
        completion = torch.full((len(samples), t), tok.pad_token_id, dtype=torch.long)
        sampler_logp = torch.zeros(len(samples), t)
        for i, s in enumerate(samples):
            completion[i, : len(s.token_ids)] = torch.tensor(s.token_ids, dtype=torch.long)
            sampler_logp[i, : len(s.logprobs)] = torch.tensor(s.logprobs, dtype=torch.float32)
        if not any(len(s.token_ids) for s in samples):  # nothing generated at all: one EOS, as the HF backend
            completion[:, 0] = tok.eos_token_id
        mask = completion_mask(completion, tok.eos_token_id)
        # padding may be the EOS token itself: lengths, not the mask alone, say where each completion ends
        lengths = torch.tensor([len(s.token_ids) for s in samples])
        mask &= torch.arange(t)[None, :] < lengths.clamp(min=1)[:, None]
        texts = tok.batch_decode(completion.masked_fill(~mask, tok.pad_token_id), skip_special_tokens=True)
        d = self.device
        seq = Sequences.build(enc.input_ids.repeat_interleave(n, 0).to(d),
                              enc.attention_mask.repeat_interleave(n, 0).to(d), completion.to(d), mask.to(d))
        return Rollout(seq, texts, n, sampler_logp=(sampler_logp.to(d) * mask.to(d)))


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


class VLLMEngine:
    """``vllm.LLM`` in the training process (``external_launcher``: one engine per training process, on its
    GPU), put to sleep between rollouts when ``sleep`` so that training gets the memory back. Seeded once
    (``seed`` + rank): a per-request seed would give every prompt of a batch the same random stream."""

    def __init__(self, model_path: str, options, seed: int):
        if not torch.cuda.is_available():
            raise ValueError("rollout.backend=vllm needs a CUDA GPU; use rollout.backend=hf on this machine")
        from vllm import LLM

        # vLLM's colocated engine joins the training processes' rendezvous (set by accelerate / torchrun)
        os.environ.setdefault("RANK", "0")
        os.environ.setdefault("LOCAL_RANK", "0")
        os.environ.setdefault("WORLD_SIZE", "1")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29533")
        self.sleep = bool(options.sleep)
        self.llm = LLM(
            model=model_path, dtype=options.dtype, gpu_memory_utilization=options.gpu_memory_utilization,
            max_model_len=options.max_model_len, enforce_eager=options.enforce_eager,
            enable_sleep_mode=self.sleep, distributed_executor_backend="external_launcher", seed=seed,
            # log-probs after temperature scaling: the distribution the tokens were drawn from
            logprobs_mode="processed_logprobs",
            # the model's generation_config.json must not add top-k or penalties to our explicit settings
            generation_config="vllm",
        )
        if self.sleep:
            self.llm.sleep(level=2)  # level 2 drops the weights: every rollout pushes fresh ones anyway

    def load_weights(self, weights):
        if self.sleep:
            self.llm.wake_up(tags=["weights"])
        model = self.llm.llm_engine.model_executor.driver_worker.model_runner.model
        for name, tensor in weights:
            model.load_weights([(name, tensor)])
        self.llm.reset_prefix_cache()  # cached prompt KV came from the old weights

    def generate(self, prompts, spec: SamplingSpec):
        from vllm import SamplingParams

        params = SamplingParams(n=spec.n, max_tokens=spec.max_tokens,
                                temperature=0.0 if spec.greedy else spec.temperature, top_p=spec.top_p,
                                top_k=0, min_p=0.0, repetition_penalty=1.0,
                                stop_token_ids=[spec.eos_token_id], logprobs=0)
        if self.sleep:
            self.llm.wake_up(tags=["kv_cache"])
        outs = self.llm.generate([{"prompt_token_ids": p} for p in prompts], sampling_params=params, use_tqdm=False)
        if self.sleep:
            self.llm.sleep(level=2)
        return [[Sample(list(c.token_ids), [lp[t].logprob for lp, t in zip(c.logprobs, c.token_ids, strict=True)])
                 for c in o.outputs] for o in outs]


def make_vllm_engine(model_path: str, options, seed: int) -> Engine:
    return VLLMEngine(model_path, options, seed)


def build_sampler(cfg, parts, model_path: str, rank: int) -> EngineSampler | None:
    """The student's sampler for ``rollout.backend`` (None: the HF backend, ``rollout.sampling``)."""
    r = cfg.rollout
    if r.backend == "hf":
        return None
    if r.backend != "vllm":
        raise ValueError(f"unknown rollout.backend {r.backend!r}; expected one of {', '.join(BACKENDS)}")
    engine = make_vllm_engine(model_path, r.vllm, cfg.seed + rank)
    return EngineSampler(engine, parts.tokenizer, parts.device)
