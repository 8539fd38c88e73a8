"""Pairwise LLM judge of two runs' evaluation outputs, judged in both orders to cancel position bias.

For each problem both runs answered, the judge sees (A, B) and then (B, A). A run wins a problem only when
both orders prefer it; any other pair of verdicts is a tie. A judgement that could not be obtained (the
endpoint failed after its retries, or the reply had no verdict) is recorded as ``failed``, never as a tie.
A failure that no retry and no other problem can fix (no key, a refused key, a host that does not resolve, a
wrong URL or model) ends the judging at once with :class:`JudgeSetupError`.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

from cdistill.jsonl import read_jsonl

_VERDICT = re.compile(r"\[\[\s*(1|2|tie)\s*\]\]", re.IGNORECASE)


class JudgeError(RuntimeError):
    """The judge could not produce a verdict (endpoint down, timed out, unparseable reply)."""


class JudgeSetupError(JudgeError):
    """A failure of the judge's settings rather than of one request: every problem would fail the same way, so
    judging stops at the first one instead of spending retries on all of them."""


def parse_verdict(text: str) -> str:
    """'1', '2' or 'tie' from the last [[...]] in the judge's reply."""
    found = _VERDICT.findall(text)
    if not found:
        raise JudgeError(f"no [[1]] / [[2]] / [[tie]] verdict in the judge's reply: {text[-80:]!r}")
    return found[-1].lower()


def combine(first: str, second: str) -> str:
    """Winner from the two orders: ``first`` judged (A as 1, B as 2), ``second`` judged (B as 1, A as 2)."""
    a_first = {"1": "A", "2": "B", "tie": "tie"}[first]
    a_second = {"1": "B", "2": "A", "tie": "tie"}[second]
    return a_first if a_first == a_second and a_first != "tie" else "tie"


class OpenAIJudge:
    """Any OpenAI-compatible ``/chat/completions`` endpoint, with a timeout and retries with backoff."""

    def __init__(self, cfg):
        self.cfg = cfg
        parts = urlsplit(cfg.base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            # urllib would refuse it with a ValueError that the retry loop reads as a malformed reply
            raise JudgeSetupError(f"judge.base_url={cfg.base_url} is not an http(s) URL "
                                  "(e.g. https://api.openai.com/v1)")
        self.host = parts.hostname
        self.url = cfg.base_url.rstrip("/") + "/chat/completions"
        self.key = ""
        if cfg.api_key_env:
            self.key = os.environ.get(cfg.api_key_env, "")
            if not self.key:
                raise JudgeSetupError(f"judge.api_key_env={cfg.api_key_env}: that environment variable is not set; "
                                      "export the key in it, or set judge.api_key_env=null for an endpoint that "
                                      "needs no key")

    def _refused(self, e: urllib.error.HTTPError) -> JudgeSetupError | None:
        """The error that ends judging for an HTTP status that says the settings are wrong, else None."""
        if e.code not in (401, 403, 404):
            return None
        got = f"{self.url} answered HTTP {e.code}"
        try:
            detail = " ".join(e.read().decode(errors="replace").split())[:160]
        except (OSError, ValueError):
            detail = ""
        got += f" ({detail})" if detail else ""
        key = (f"the key in ${self.cfg.api_key_env} (judge.api_key_env)" if self.cfg.api_key_env
               else "judge.api_key_env (null: no key was sent)")
        if e.code == 401:
            return JudgeSetupError(f"{got}: check {key}")
        if e.code == 403:
            return JudgeSetupError(f"{got}: check {key} and that it may use judge.model={self.cfg.model}")
        # 404: the URL and the model are the same for every request, so a missing route or model fails them all;
        # a problem of one prompt (too long, refused content) comes back as 400, which stays per problem
        return JudgeSetupError(f"{got}: check judge.base_url={self.cfg.base_url} (an OpenAI-compatible API usually "
                               f"ends in /v1) and judge.model={self.cfg.model}")

    def __call__(self, prompt: str) -> str:
        body = json.dumps({
            "model": self.cfg.model, "messages": [{"role": "user", "content": prompt}],
            "temperature": self.cfg.temperature, "max_tokens": self.cfg.max_new_tokens,
        }).encode()
        headers = {"Content-Type": "application/json"}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        last = ""
        for attempt in range(self.cfg.retries + 1):
            if attempt:
                time.sleep(self.cfg.backoff_s * 2 ** (attempt - 1))
            try:
                req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
                with urllib.request.urlopen(req, timeout=self.cfg.timeout_s) as resp:
                    return json.loads(resp.read())["choices"][0]["message"]["content"]
            except urllib.error.HTTPError as e:
                fatal = self._refused(e)
                if fatal is not None:
                    raise fatal from None
                last = f"HTTP {e.code} from {self.url}"
                if e.code == 400:  # this request is wrong (too long a prompt?): retrying cannot help, others may pass
                    break
            except (urllib.error.URLError, TimeoutError, OSError) as e:
                reason = getattr(e, "reason", e)
                # EAI_AGAIN is the resolver's own "try again" (a DNS server that did not answer): retried like a
                # refused or reset connection; any other lookup failure (no such name) will not change by retrying
                if isinstance(reason, socket.gaierror) and reason.errno != getattr(socket, "EAI_AGAIN", None):
                    raise JudgeSetupError(f"the judge's host {self.host} does not resolve ({reason.strerror}): check "
                                          f"judge.base_url={self.cfg.base_url} (or this machine's network)") from None
                last = f"cannot reach {self.url}: {reason}"
            except (KeyError, IndexError, ValueError) as e:
                last = f"malformed reply from {self.url}: {e}"
        n = attempt + 1  # fewer than retries + 1 after a 400
        raise JudgeError(f"{last} (after {n} attempt{'s' * (n != 1)})")


class HFJudge:
    """A local Hugging Face causal LM, greedy (deterministic)."""

    def __init__(self, cfg, device: str = "cpu"):
        from cdistill.models.loading import load_model, load_tokenizer

        self.tok = load_tokenizer(cfg.model)
        self.model = load_model(cfg.model, device=device).eval()
        self.cfg, self.device = cfg, device

    def __call__(self, prompt: str) -> str:
        import torch

        text = prompt
        if getattr(self.tok, "chat_template", None):
            text = self.tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                add_generation_prompt=True)
        enc = self.tok(text, return_tensors="pt").to(self.device)
        with torch.inference_mode():
            out = self.model.generate(**enc, max_new_tokens=self.cfg.max_new_tokens, do_sample=False,
                                      pad_token_id=self.tok.pad_token_id)
        return self.tok.decode(out[0, enc.input_ids.shape[1]:], skip_special_tokens=True)


def build_judge(cfg, device: str = "cpu"):
    if cfg.backend == "openai":
        return OpenAIJudge(cfg)
    if cfg.backend == "hf":
        return HFJudge(cfg, device)
    raise ValueError(f"unknown judge.backend {cfg.backend!r}; expected openai or hf")


def load_samples(run_dir: Path) -> dict[str, dict]:
    """A run's final evaluation records, by question."""
    p = Path(run_dir) / "eval_samples.jsonl"
    if not p.is_file():
        raise FileNotFoundError(f"{run_dir} has no eval_samples.jsonl (finish or evaluate the run first)")
    return {r["question"]: r for r in read_jsonl(p)}


def solution_of(record: dict, which: str) -> str:
    if which == "greedy":
        return record["greedy"]
    if which == "sample0":
        return record["samples"][0]["text"]
    raise ValueError(f"unknown judge.solution {which!r}; expected greedy or sample0")


FAIL_FAST = 3  # problems; every one failed: stop instead of spending retries on all the others


def judge_runs(judge, cfg, run_a: Path, run_b: Path, n_problems: int | None = None, progress=None):
    """Per-problem records and the summary (win / loss / tie / failed rates of A against B)."""
    a, b = load_samples(run_a), load_samples(run_b)
    shared = [q for q in a if q in b][: n_problems or None]
    if not shared:
        raise ValueError(f"{run_a} and {run_b} have no evaluated problem in common")
    records = []
    for q in (progress(shared) if progress else shared):
        sa, sb = solution_of(a[q], cfg.solution), solution_of(b[q], cfg.solution)
        rec = {"question": q, "solution_a": sa, "solution_b": sb}
        try:
            rec["verdict_ab"] = parse_verdict(judge(cfg.template.format(question=q, solution_1=sa, solution_2=sb)))
            rec["verdict_ba"] = parse_verdict(judge(cfg.template.format(question=q, solution_1=sb, solution_2=sa)))
            rec["winner"] = combine(rec["verdict_ab"], rec["verdict_ba"])
        except JudgeSetupError:
            raise  # the next problems would fail the same way
        except JudgeError as e:
            rec["winner"], rec["error"] = "failed", str(e)
        records.append(rec)
        if len(records) == FAIL_FAST and all(r["winner"] == "failed" for r in records):
            break  # an endpoint that fails the first problems after its retries is down or misconfigured
    counts = Counter(r["winner"] for r in records)
    n = len(records)
    summary = {"run_a": str(run_a), "run_b": str(run_b), "n_problems": n, "judge_model": cfg.model,
               "backend": cfg.backend, "win_rate": counts["A"] / n, "loss_rate": counts["B"] / n,
               "tie_rate": counts["tie"] / n, "failed_rate": counts["failed"] / n, "template": cfg.template}
    return summary, records
