"""Completion masks: which generated positions are actions of the policy."""

from __future__ import annotations

import torch


def completion_mask(tokens: torch.Tensor, eos_token_id: int | list[int]) -> torch.Tensor:
    """Bool mask [B, T] that is True up to and including the first EOS of each row.

    The EOS itself is an action the student chose (it ends the answer), so it counts; whatever
    ``generate`` pads after it does not.
    """
    ids = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
    is_eos = torch.zeros_like(tokens, dtype=torch.bool)
    for i in ids:
        is_eos |= tokens == i
    eos_strictly_before = (is_eos.long().cumsum(dim=1) - is_eos.long()) > 0
    return ~eos_strictly_before


def lengths(mask: torch.Tensor) -> torch.Tensor:
    return mask.long().sum(dim=1)


def last_token_onehot(mask: torch.Tensor) -> torch.Tensor:
    """Bool [B, T], True at the last valid position of each row (all False for an empty row)."""
    mask = mask.bool()
    n = lengths(mask)
    pos = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return (pos == (n - 1).unsqueeze(1)) & mask
