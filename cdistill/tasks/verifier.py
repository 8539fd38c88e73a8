"""The task reward: extract a final answer from a completion and check it against the gold answer.

Extraction has two modes (docs/tasks.md):

* ``strict``: the task's own answer format only. ``answer_format="gsm8k"``: the first ``#### X`` line;
  ``answer_format="math"``: the last ``\\boxed{X}``.
* ``flexible``: an ordered fallback, the first step that yields an answer wins:
  1. the strict format;
  2. the last ``\\boxed{X}``;
  3. the last "final answer is[:] X" / "the answer is[:] X" / "Answer: X" (X: the rest of that line up to the
     end of its sentence, or the next non-empty line, or a whole display ``\\[...\\]``; markdown bold, ``$...$``,
     ``\\(...\\)`` and a trailing period are removed);
  4. the last number in the completion (like lm-evaluation-harness's gsm8k "flexible-extract").

Extracted and gold answers are normalised the same way (``normalize``: ``\\$``, ``$``, ``\\text{...}`` units,
``%``, ``\\!``, ``^\\circ``, thousands commas, ``**``, a trailing period), then compared: as numbers when both are
plain numbers (exact, fast, no parser), as equal strings, else by math-verify (fractions, LaTeX, intervals).
math-verify enforces its timeout with signals, which only works in the main thread: the training loop grades
there.
"""

from __future__ import annotations

import re

MODES = ("strict", "flexible")
ANSWER_FORMATS = ("gsm8k", "math")

_FINAL = re.compile(r"####[ \t]*([^\n#][^\n]*)")  # a run of #s (an untrained model's ####...#) is no answer
_NUMBER = re.compile(r"^[-+]?\$?\s*[-+]?(\d[\d,]*)(\.\d+)?\s*$")
# "final answer is: X", "The final answer: X", "the answer is X", "Answer: X", "**Answer:** X" (case-insensitive)
# "Answer:" counts at the start of a line only (after markdown bold): "Let me find the answer: first ..." is prose
_PHRASE = re.compile(r"\b(?:final|the)\s+answer\s+is\b\s*:?|(?:^|\n)[ \t]*\**[ \t]*answer\s*\**\s*:", re.IGNORECASE)
# where a stated answer's sentence goes on to justify it: "72 because 8 x 9 = 72", "72, since ..."
_CONNECTIVE = re.compile(r",?\s+\b(?:because|since|as|which|so|but|given|from|after|when|if)\b", re.IGNORECASE)
_LIST_ITEM = re.compile(r"(?:\d+[.)]|[-*•])\s")
_ANY_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_SENTENCE_END = re.compile(r"\.(?:\s|$)|\bI hope it is correct", re.IGNORECASE)
_THOUSANDS = re.compile(r"^[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
# a unit ending an answer, after a number: 5.4 \text{ cents}, \frac{270}7\text{ degrees}, 864 \mbox{ inches}^2
_UNIT = re.compile(r"(?<=[\d}])\s*\\(?:text|mbox|mathrm)\{\s*[A-Za-z][A-Za-z .]*\}(?:\^\{?\d\}?)?\s*$")
_WRAPPER = re.compile(r"\\(?:text|mbox|textbf|mathrm)\{([^{}]*)\}")
# a leading number followed by words: "72 apples", "72, which is the total"
# (not a hedge or a magnitude: "3 or more", "1 million", "5 to 6" stay whole, and are not a plain number)
_NUMBER_THEN_WORDS = re.compile(r"^([-+]?\d[\d,]*(?:\.\d+)?)(?:\s+|\s*,\s*)(?!(?:or|and|to|more|less|fewer|plus|minus|"
                                r"times|hundred|thousand|million|billion|trillion|percent)\b)[A-Za-z]{2,}[^\\\d]*$",
                                re.IGNORECASE)


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


def check_mode(mode: str, answer_format: str = "gsm8k") -> None:
    """Raise ValueError (one line) for an unknown extraction mode or answer format."""
    if mode not in MODES:
        raise ValueError(f"unknown answer_extraction {mode!r}; expected one of {', '.join(MODES)}")
    if answer_format not in ANSWER_FORMATS:
        raise ValueError(f"unknown answer_format {answer_format!r}; expected one of {', '.join(ANSWER_FORMATS)}")


def _closing_brace(s: str, i: int) -> int | None:
    """Index of the brace that closes the ``{`` at ``s[i]``, or None."""
    depth = 0
    for j in range(i, len(s)):
        depth += {"{": 1, "}": -1}.get(s[j], 0)
        if depth == 0:
            return j
    return None


def _strip_outer(s: str) -> str:
    """Remove wrappers around a whole answer: ``\\(...\\)``, ``\\[...\\]``, ``\\boxed{...}``, ``**``, a final period."""
    prev = None
    while s != prev:
        prev = s
        s = s.strip().strip("*").strip()
        for a, b in (("\\(", "\\)"), ("\\[", "\\]")):
            if s.startswith(a) and s.endswith(b):
                s = s[len(a) : -len(b)]
        if s.startswith("\\boxed{") and _closing_brace(s, len("\\boxed")) == len(s) - 1:
            s = s[len("\\boxed{") : -1]
        s = s.rstrip(".").strip()
    return s


def normalize(answer: str) -> str:
    """The comparable form of an answer (applied to extracted and gold answers alike; idempotent)."""
    s = answer.replace("\\$", "").replace("$", "").replace("**", "")
    s = _strip_outer(s)
    s = re.sub(r",\\!\s*", ",", s).replace("\\!", "")
    s = _UNIT.sub("", s)
    s = _WRAPPER.sub(lambda m: m.group(1).strip(), s)
    s = s.replace("\\%", "").replace("%", "")
    s = re.sub(r"\^\s*\{?\\circ\}?", "", s).replace("\\degree", "")
    s = _strip_outer(s)
    m = _NUMBER_THEN_WORDS.match(s)
    if m:
        s = m.group(1)
    if _THOUSANDS.match(s):
        s = s.replace(",", "")
    return s.strip()


def _hash_line(text: str) -> str | None:
    for m in _FINAL.finditer(text):
        if m.group(1).strip():
            return m.group(1).strip()
    return None


def _phrase(text: str) -> str | None:
    """The value after the last "final answer is" / "the answer is" / "Answer:": the rest of its line up to the
    end of the sentence (the next non-empty line when the phrase ends its line; a display ``\\[...\\]`` or
    ``$$...$$`` whole)."""
    matches = list(_PHRASE.finditer(text))
    if not matches:
        return None
    last = matches[-1]
    rest = text[last.end() :].lstrip("*: \t")
    if rest.startswith("\n"):  # "The answer is:\n\n72": the next non-empty line
        rest = rest.lstrip()
        if _LIST_ITEM.match(rest):  # "Answer:\n1. Ava has 5 ...": a worked list, not a stated answer
            return None
    for a, b in (("\\[", "\\]"), ("$$", "$$")):
        if rest.startswith(a) and b in rest[len(a) :]:
            return rest[len(a) : rest.index(b, len(a))]
    line = rest.split("\n", 1)[0]
    end = _SENTENCE_END.search(line)
    value = line[: end.start()] if end else line
    cut = _CONNECTIVE.search(value)
    value = value[: cut.start()] if cut else value
    # words and an equation: a derivation ("first 3+4=7, then 7*2=14"), not a stated answer: the next step reads it
    return None if "=" in value and _has_words(value) else value


def _last_number(text: str) -> str | None:
    found = _ANY_NUMBER.findall(text)
    return found[-1].rstrip(",") if found else None


def extract_answer(text: str, mode: str = "strict", answer_format: str = "gsm8k") -> str | None:
    """The completion's final answer, normalised (``normalize``), or None when none can be extracted.

    ``strict``: the format of ``answer_format`` only; ``flexible``: the ordered fallback in the module doc.
    """
    check_mode(mode, answer_format)
    strict = _hash_line if answer_format == "gsm8k" else last_boxed
    steps = [strict] if mode == "strict" else [strict, last_boxed, _phrase, _last_number]
    for step in steps:
        raw = step(text)
        if raw is not None:
            ans = normalize(raw)
            if ans:
                return ans
    return None


def _as_number(s: str) -> float | None:
    s = s.strip().rstrip(".")
    if not _NUMBER.match(s):
        return None
    try:
        return float(s.replace(",", "").replace("$", "").replace(" ", ""))
    except ValueError:
        return None


def _has_words(s: str) -> bool:
    """Whether ``s`` has an English word (two or more letters) outside LaTeX commands."""
    return re.search(r"[A-Za-z]{2,}", re.sub(r"\\[A-Za-z]+", "", s)) is not None


def answers_match(pred: str | None, gold: str, timeout_seconds: int = 5) -> bool:
    if pred is None:
        return False
    pred, gold = normalize(pred), normalize(gold)
    a, b = _as_number(pred), _as_number(gold)
    if a is not None and b is not None:
        return abs(a - b) <= 1e-9 * max(1.0, abs(b))  # exact up to float noise, at any magnitude
    if pred and pred == gold:
        return True
    if _has_words(pred) and not _has_words(gold):  # "72 (or 73)": a hedge, not an answer math-verify may pick from
        return False
    from math_verify import parse, verify

    def wrap(s: str) -> str:
        return s if "$" in s or "\\boxed" in s else f"${s}$"

    try:
        gold_p = parse(wrap(gold), parsing_timeout=timeout_seconds)
        pred_p = parse(wrap(pred), parsing_timeout=timeout_seconds)
        return bool(verify(gold_p, pred_p, timeout_seconds=timeout_seconds))
    except Exception:  # a verifier failure on one answer must not end a run: it is simply not correct
        return False


def grade(completion: str, gold: str, mode: str = "strict", answer_format: str = "gsm8k") -> float:
    """1.0 if the completion's final answer (extracted in ``mode``) equals ``gold``, else 0.0."""
    return float(answers_match(extract_answer(completion, mode, answer_format), gold))
