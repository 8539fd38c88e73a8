"""Supervised fine-tuning on (prompt, completion) pairs: builds the embedded models (and serves ``sft``)."""

from __future__ import annotations

import random

import torch
from tqdm.auto import tqdm

from cdistill.optim import lr_lambda


def sft_batch(tokenizer, pairs: list[tuple[str, str]], device="cpu"):
    """Right-padded input ids, attention mask and labels (−100 on prompt and padding)."""
    rows, labels = [], []
    for prompt, completion in pairs:
        p = tokenizer(prompt).input_ids  # with the special tokens generation prompts get (a BOS, for Llama)
        c = tokenizer(completion, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        rows.append(p + c)
        labels.append([-100] * len(p) + c)
    n = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id
    ids = torch.tensor([r + [pad] * (n - len(r)) for r in rows], device=device)
    attn = torch.tensor([[1] * len(r) + [0] * (n - len(r)) for r in rows], device=device)
    lab = torch.tensor([r + [-100] * (n - len(r)) for r in labels], device=device)
    return ids, attn, lab


def train_sft(model, tokenizer, pairs, steps: int, lr: float, batch_size: int, seed: int = 0,
              warmup: int = 20, schedule: str = "cosine", desc: str = "sft", device="cpu",
              label_smoothing: float = 0.0) -> list[float]:
    """``steps`` AdamW steps of next-token loss on completions; returns the loss of each step."""
    rng = random.Random(seed)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(warmup, steps, schedule))
    losses = []
    bar = tqdm(range(steps), desc=desc, leave=False, mininterval=2.0)
    for _ in bar:
        ids, attn, lab = sft_batch(tokenizer, rng.sample(pairs, min(batch_size, len(pairs))), device)
        logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), lab[:, 1:].reshape(-1),
                                                 ignore_index=-100, label_smoothing=label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
    model.eval()
    return losses
