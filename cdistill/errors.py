"""One-line user errors: below every command, so that any module can report one without importing the CLI."""

from __future__ import annotations

import os
import sys


class UserError(Exception):
    """A problem with the user's input: reported in one line, exit code 2."""


def fail(msg: str, debug: bool = False, exc: BaseException | None = None, code: int = 2) -> None:
    if debug or os.environ.get("HYDRA_FULL_ERROR") == "1":
        if exc is not None:
            raise exc
    say_error(f"cdistill: error: {msg}")
    sys.exit(code)


def say_error(line: str) -> None:
    """``line`` on stderr in one write: under a multi-process launch every rank may report the same error at once,
    and an unbuffered stream would write the text and its newline separately, interleaving the ranks' lines."""
    try:
        sys.stderr.flush()
        os.write(sys.stderr.fileno(), (line + "\n").encode())
    except (AttributeError, OSError, ValueError):  # a stream without a descriptor (captured in tests)
        print(line, file=sys.stderr)
