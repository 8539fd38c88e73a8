"""The task reward: extract a final answer from a completion and check it against the gold answer.

Plain numbers (the whole of GSM8K and the embedded task) are compared exactly as numbers, which is fast
and needs no parser; anything else (fractions, LaTeX, intervals) goes to math-verify. math-verify
enforces its timeout with signals, which only works in the main thread: the training loop grades there.
"""

from __future__ import annotations

import re

_FINAL = re.compile(r"####\s*([^\n]*)")
_NUMBER = re.compile(r"^[-+]?\$?\s*[-+]?(\d[\d,]*)(\.\d+)?\s*$")


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` in ``text``, braces balanced, or None."""
    start = text.rfind("\\boxed")
    if start < 0:
        return None
    i = text.find("{", start)
    if i < 0:
        return None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j].strip()
    return None


def extract_answer(text: str) -> str | None:
    """The model's final answer: the first ``#### X`` line, else the last ``\\boxed{X}``, else None."""
    m = _FINAL.search(text)
    if m and m.group(1).strip():
        return m.group(1).strip()
    return last_boxed(text)


def _as_number(s: str) -> float | None:
    s = s.strip().rstrip(".")
    if not _NUMBER.match(s):
        return None
    try:
        return float(s.replace(",", "").replace("$", "").replace(" ", ""))
    except ValueError:
        return None


def answers_match(pred: str | None, gold: str, timeout_seconds: int = 5) -> bool:
    if pred is None:
        return False
    a, b = _as_number(pred), _as_number(gold)
    if a is not None and b is not None:
        return abs(a - b) <= 1e-9 * max(1.0, abs(b))  # exact up to float noise, at any magnitude
    from math_verify import parse, verify

    def wrap(s: str) -> str:
        return s if "$" in s or "\\boxed" in s else f"${s}$"

    try:
        gold_p = parse(wrap(gold), parsing_timeout=timeout_seconds)
        pred_p = parse(wrap(pred), parsing_timeout=timeout_seconds)
        return bool(verify(gold_p, pred_p, timeout_seconds=timeout_seconds))
    except Exception:  # a verifier failure on one answer must not end a run: it is simply not correct
        return False


def grade(completion: str, gold: str) -> float:
    """1.0 if the completion's final answer equals ``gold``, else 0.0."""
    return float(answers_match(extract_answer(completion), gold))
