"""Reading the JSONL files cdistill writes and reads: datasets, metrics, evaluation samples, caches."""

from __future__ import annotations

import json
from pathlib import Path


def read_jsonl(path: str | Path, error: type[Exception] = ValueError, what: str = "file",
               skip_malformed: bool = False) -> list[dict]:
    """The rows of a JSONL file (blank lines skipped); a missing, unreadable or malformed file raises
    ``error`` with one line that names the file (and the line). ``skip_malformed``: a line that is not JSON
    (cut short by a killed writer) is left out instead."""
    p = Path(path)
    if not p.is_file():
        raise error(f"{what} not found: {p}")
    rows, i = [], 0
    try:
        with p.open(encoding="utf-8") as fh:
            for i, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    if skip_malformed:
                        continue
                    raise error(f"{p}:{i}: malformed JSON line ({e.msg})") from None
    except UnicodeDecodeError:
        raise error(f"{p}:{i + 1}: not UTF-8 text; is it really a JSONL file?") from None
    except OSError as e:
        raise error(f"cannot read {what} {p}: {e.strerror}") from None
    return rows
