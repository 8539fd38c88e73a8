"""Loading models and tokenizers by Hugging Face id or local path, and scoring completions."""

from __future__ import annotations

import importlib.util
import inspect
from dataclasses import dataclass

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from cdistill.budget import embed, has_budget_input
from cdistill.objectives.chunking import token_logprob_and_entropy


class ModelError(ValueError):
    """A model or tokenizer that cannot be used as configured."""


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_tokenizer(name_or_path: str, **kwargs):
    tok = AutoTokenizer.from_pretrained(name_or_path, **kwargs)
    tok.padding_side = "left"  # generation appends on the right; prompts must end at the same column
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


QUANTIZATIONS = ("8bit", "4bit")


def quantization_config(name: str, compute_dtype: torch.dtype):
    """bitsandbytes weight quantization for a frozen model (the teacher): ``8bit`` (LLM.int8) or ``4bit`` (NF4).
    The output embedding stays unquantized (transformers leaves it out), so chunked scoring reads it as is."""
    if name not in QUANTIZATIONS:
        raise ModelError(f"unknown quantization {name!r}; expected one of {', '.join(QUANTIZATIONS)} or null")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ModelError(f"{name} quantization needs bitsandbytes: pip install 'cdistill[quant]'")
    from transformers import BitsAndBytesConfig

    if name == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute_dtype)


def load_model(name_or_path: str, dtype: str = "float32", device: str = "cpu", quantization: str | None = None,
               **kwargs):
    if dtype not in DTYPES:
        raise ModelError(f"unknown dtype {dtype!r}; expected one of {sorted(DTYPES)}")
    if quantization:  # quantized weights are placed while loading and cannot be moved after
        kwargs.update(quantization_config=quantization_config(quantization, DTYPES[dtype]), device_map={"": device})
    model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=DTYPES[dtype], **kwargs)
    if getattr(model.config, "final_logit_softcapping", None):
        raise ModelError(f"{name_or_path}: logit soft-capping is not supported by the chunked scorer")
    return model if quantization else model.to(device)


def check_same_vocabulary(student_tok, teacher_tok) -> None:
    """Token-level divergences compare distributions over the same tokens: the vocabularies must match."""
    if student_tok.get_vocab() != teacher_tok.get_vocab():
        raise ModelError(
            "student and teacher tokenizers differ; token-level distillation needs the teacher's tokenizer"
        )


def real_vocab_size(model_a, model_b, tokenizer) -> int:
    """Rows of the output embedding shared by both models and the tokenizer (padding rows cut)."""
    return min(model_a.get_output_embeddings().weight.shape[0], model_b.get_output_embeddings().weight.shape[0],
               len(tokenizer))


@dataclass
class Sequences:
    """Prompt and completion tokens laid side by side, as one causal-LM input."""

    input_ids: torch.Tensor  # [B, P + T]
    attention_mask: torch.Tensor  # [B, P + T]
    position_ids: torch.Tensor  # [B, P + T]
    prompt_len: int
    completion_ids: torch.Tensor  # [B, T]
    completion_mask: torch.Tensor  # [B, T] bool
    budget: torch.Tensor | None = None  # [B, P + T] z_t / d fed at each input position (``saute`` rollouts)

    @staticmethod
    def build(prompt_ids, prompt_mask, completion_ids, completion_mask, budget=None) -> Sequences:
        attn = torch.cat([prompt_mask.long(), completion_mask.long()], dim=1)
        # positions as generate() assigns them under left padding; a mismatch would bias every log-prob
        pos = (attn.cumsum(1) - 1).clamp(min=0)
        return Sequences(
            torch.cat([prompt_ids, completion_ids], dim=1), attn, pos, prompt_ids.shape[1],
            completion_ids, completion_mask.bool(), budget,
        )

    def for_autograd(self) -> Sequences:
        """A copy whose tensors autograd may save: generation runs under inference_mode, and its tensors
        cannot take part in a differentiated forward."""
        return Sequences(*(x.clone() if isinstance(x, torch.Tensor) else x for x in vars(self).values()))

    def select(self, rows: torch.Tensor | slice) -> Sequences:
        return Sequences(self.input_ids[rows], self.attention_mask[rows], self.position_ids[rows], self.prompt_len,
                         self.completion_ids[rows], self.completion_mask[rows],
                         None if self.budget is None else self.budget[rows])


def cache_of(out):
    """The KV cache a forward returned (``cache`` since transformers 5.x, ``past_key_values`` before)."""
    return out.cache if hasattr(out, "cache") else out.past_key_values


def with_cache(model, cache) -> dict:
    """``cache`` as the keyword ``model.forward`` takes it."""
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    return {name: cache}


def _inputs(model, seq: Sequences, cols: slice, rows=slice(None)) -> dict:
    ids = seq.input_ids[rows, cols]
    if seq.budget is not None and has_budget_input(model):
        return {"inputs_embeds": embed(model, ids, seq.budget[rows, cols])}
    return {"input_ids": ids}


def prompt_groups(group_size: int, micro_batch: int, share_prompt: bool) -> int:
    """The group size to share prompts over (``completion_hidden``): 1 (no sharing) unless enabled and every
    micro-batch holds whole groups."""
    return group_size if share_prompt and micro_batch % group_size == 0 else 1


def completion_hidden(model, seq: Sequences, group_size: int = 1) -> torch.Tensor:
    """Final hidden states [B, T, H] at the positions that predict each completion token.

    With ``group_size`` G > 1 (rows g·G … g·G + G − 1 share one prompt, as sampled groups do) the prompt
    is run once per group and its KV cache repeated for the G completions: the prompt's share of the
    forward (and, under autograd, of the backward) shrinks G-fold; gradients flow through the shared cache.
    A budget-conditioned student (``saute``) sees the budget recorded when the completion was sampled.
    """
    dec = model.get_decoder()
    p, t = seq.prompt_len, seq.completion_ids.shape[1]
    if group_size > 1 and seq.input_ids.shape[0] % group_size == 0:
        first = slice(None, None, group_size)
        head = dec(**_inputs(model, seq, slice(None, p), first), attention_mask=seq.attention_mask[first, :p],
                   position_ids=seq.position_ids[first, :p], use_cache=True)
        cache = cache_of(head)
        cache.batch_repeat_interleave(group_size)
        tail = dec(**_inputs(model, seq, slice(p, None)), attention_mask=seq.attention_mask,
                   position_ids=seq.position_ids[:, p:], use_cache=True, **with_cache(dec, cache))
        last = head.last_hidden_state[:, -1:].repeat_interleave(group_size, dim=0)
        return torch.cat([last, tail.last_hidden_state[:, : t - 1]], dim=1)
    out = dec(**_inputs(model, seq, slice(None)), attention_mask=seq.attention_mask, position_ids=seq.position_ids,
              use_cache=False)
    return out.last_hidden_state[:, p - 1 : p - 1 + t]


def score(model, seq: Sequences, temperature: float = 1.0, chunk: int = 1024, vocab_size: int | None = None,
          group_size: int = 1):
    """(log-probs of the completion tokens [B, T], entropies [B, T], hidden states [B, T, H])."""
    root_score = getattr(model, "root_score", None)
    if root_score is not None:  # a sharded (FSDP) student: its forward must enter through the FSDP root
        return root_score(seq, temperature, chunk, vocab_size, group_size)
    h = completion_hidden(model, seq, group_size)
    w = model.get_output_embeddings().weight
    logp, ent = token_logprob_and_entropy(h, w, seq.completion_ids, seq.completion_mask, chunk, temperature,
                                          vocab_size)
    return logp, ent, h
