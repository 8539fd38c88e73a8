"""A teacher behind an inference server (``model.teacher.backend=server``): served once, on its own GPUs or nodes,
by vLLM or llama.cpp, and queried over HTTP instead of held beside the student.

The costs ``logratio`` and ``teacher_nll`` need only the teacher's log-prob of each sampled token, which a server
returns for a given sequence: vLLM's ``/v1/completions`` with ``prompt_logprobs`` (checked against vLLM 0.33's
``entrypoints/openai/completion/protocol.py``: ``prompt`` may be token ids, ``prompt_logprobs=k`` returns, at every
position after the first, a map ``{token id: {logprob, rank, decoded_token}}`` holding the given token and the top
k), and llama-cpp-python's server with ``echo`` and ``logprobs``. With ``server.top_k`` the top k log-probs come
too, for the coarsened full-distribution terms (``cdistill.objectives.topk``). The teacher's samples (``seqkd``'s
solutions, ``gkd``'s off-policy batches, the teacher's own evaluation) are the same server's completions.

Sequences go to vLLM as token ids, so no re-tokenisation can shift a position. llama-cpp-python's server takes only
text: each sequence is sent as its decoded text (special tokens included); the server's own tokenisation of that
text (``/extras/tokenize``) says which tokens its log-probs are for, and ``spread_over_tokens`` puts them on the
sampled tokens (``llama_cpp.Llama._create_completion``, 0.3.36: the echoed prompt drops its first token and every
BOS token, and its log-probs are aligned only when the text starts with BOS). At connection the served model's
tokenizer is checked against ``model.teacher.name_or_path``'s on a probe text.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from cdistill.models.cross_tokenizer import spread_over_tokens
from cdistill.models.forward import CompletionForward, Sequences
from cdistill.objectives.topk import TopK
from cdistill.rollout.engines import EngineSampler, Sample, SamplingSpec

log = logging.getLogger(__name__)
logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request otherwise

APIS = ("auto", "vllm", "llama_cpp")
RETRIED = (408, 425, 429, 500, 502, 503, 504)  # statuses that a busy or restarting server answers
TOKENIZER_PROBE = "Distillation keeps 12 + 7 = 19, and the budget d."


class ServerError(RuntimeError):
    """The teacher's server cannot be used as configured (one line)."""


@dataclass(frozen=True)
class ServerOptions:
    base_url: str
    model: str
    api: str = "auto"
    api_key_env: str | None = None
    timeout: float = 120.0
    retries: int = 5
    max_concurrency: int = 16
    top_k: int = 0
    backoff: float = 0.5  # seconds before the first retry, doubled at each
    setting: str = "model.teacher"  # where its settings are (model.teachers.<name> for a further teacher's)

    @classmethod
    def from_config(cls, teacher_cfg, setting: str = "model.teacher") -> ServerOptions:
        s = teacher_cfg.server
        return cls(base_url=str(s.base_url).rstrip("/"), model=s.model or teacher_cfg.name_or_path, api=s.api,
                   api_key_env=s.api_key_env, timeout=float(s.timeout), retries=int(s.retries),
                   max_concurrency=int(s.max_concurrency), top_k=int(s.top_k), setting=setting)


class Client:
    """JSON over HTTP with retries (exponential backoff) on transient failures, and bounded concurrency."""

    def __init__(self, opts: ServerOptions):
        import httpx

        self.opts, self.httpx = opts, httpx
        headers = {}
        if opts.api_key_env:
            key = os.environ.get(opts.api_key_env)
            if not key:
                raise ServerError(f"{opts.setting}.server.api_key_env={opts.api_key_env}: that environment variable "
                                  "is not set")
            headers["Authorization"] = f"Bearer {key}"
        self.http = httpx.Client(base_url=opts.base_url, timeout=opts.timeout, headers=headers,
                                 limits=httpx.Limits(max_connections=opts.max_concurrency))
        self.pool = ThreadPoolExecutor(max_workers=opts.max_concurrency, thread_name_prefix="teacher-server")

    def call(self, path: str, body: dict | None = None) -> dict:
        url, last = path if "://" in path else f"{self.opts.base_url}{path}", ""
        for attempt in range(self.opts.retries + 1):
            if attempt:
                time.sleep(self.opts.backoff * 2 ** (attempt - 1))
            try:
                r = self.http.post(path, json=body) if body is not None else self.http.get(path)
            except self.httpx.TimeoutException:
                last = "timeout"
                continue
            except self.httpx.TransportError as e:  # refused, reset
                last = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
                continue
            if r.status_code in RETRIED:
                last = f"HTTP {r.status_code} {_brief(r.text, 120)}".rstrip()
                continue
            if r.status_code >= 400:
                raise ServerError(f"the teacher's server ({url}) refused the request: HTTP {r.status_code} "
                                  f"{_brief(r.text)}")
            try:
                return r.json()
            except ValueError:
                raise ServerError(f"the teacher's server ({url}) answered something that is not JSON: "
                                  f"{_brief(r.text)}") from None
        tries = self.opts.retries + 1
        if last == "timeout":
            raise ServerError(f"the teacher's server at {url} did not answer within {self.opts.setting}.server.timeout="
                              f"{self.opts.timeout:g} s, {tries} tries (overloaded? raise the timeout or lower "
                              f"{self.opts.setting}.server.max_concurrency)")
        if last.startswith("HTTP"):
            raise ServerError(f"the teacher's server at {url} failed {tries} tries ({last})")
        raise ServerError(f"the teacher's server is unreachable at {url} after {tries} tries ({last}); is it "
                          f"running? ({self.opts.setting}.server.base_url)")

    def map(self, fn, items: list) -> list:
        return list(self.pool.map(fn, items))

    def close(self) -> None:
        self.pool.shutdown(wait=False)
        self.http.close()


def _brief(text: str, n: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[:n] + "…"


class ServedTeacher:
    """The teacher as the rest of cdistill uses it: ``completion_forward`` (its log-probs on given sequences) and
    ``rollout`` (its completions), both over HTTP."""

    served = True  # ``rollout.sampling.generate`` asks the server for completions

    def __init__(self, opts: ServerOptions, tokenizer, device="cpu", client: Client | None = None):
        self.opts, self.tokenizer, self.device = opts, tokenizer, device
        self.client = client or Client(opts)
        # llama-cpp-python's extras (tokenize) sit beside /v1, not under it
        self.root = opts.base_url.removesuffix("/v1") if opts.base_url.endswith("/v1") else opts.base_url
        self.name_or_path = f"served:{opts.model}"  # keys the seqkd solutions cache: not the in-process teacher's
        self.counts = {"sequences": 0, "retokenized": 0}  # llama.cpp: sequences scored through another tokenisation
        self.lock = threading.Lock()  # requests run in threads
        self.max_model_len: int | None = None  # set by _connect where the server says
        self.api = self._connect()
        self.adds_bos = False  # set by the tokenizer check (llama.cpp: a GGUF whose metadata adds BOS)
        self._check_tokenizer()
        if opts.top_k and self.api == "llama_cpp":
            raise ServerError(f"{opts.setting}.server.top_k needs a vLLM server: llama.cpp's server names its top "
                              "log-probs by their text, which does not identify a token")

    def _connect(self) -> str:
        """Check that the server serves ``opts.model`` and tell vLLM from llama.cpp (``api: auto``)."""
        served = self.client.call("/models").get("data", [])
        names = [m.get("id") for m in served]
        if self.opts.model not in names:
            listed = ", ".join(map(str, names)) or "no model"
            raise ServerError(f"the teacher's server at {self.opts.base_url} serves {listed}, not {self.opts.model} "
                              f"({self.opts.setting}.server.model)")
        entry = next(m for m in served if m.get("id") == self.opts.model)
        # vLLM says how many positions it serves (llama.cpp does not): prompts plus completions must fit
        self.max_model_len = entry.get("max_model_len") if isinstance(entry.get("max_model_len"), int) else None
        if self.opts.api != "auto":
            return self.opts.api
        owner = entry.get("owned_by")
        return "vllm" if owner == "vllm" else "llama_cpp"

    def _server_tokens(self, text: str) -> list[int] | None:
        """The server's tokens for ``text`` (with the special tokens it adds itself), or None without the endpoint:
        vLLM's ``/tokenize``, llama-cpp-python's ``/extras/tokenize``."""
        path, body = ("/tokenize", {"prompt": text, "add_special_tokens": True}) if self.api == "vllm" else \
            ("/extras/tokenize", {"input": text})
        try:
            out = self.client.call(self.root + path, {"model": self.opts.model, **body})
        except ServerError:
            return None
        return [int(t) for t in out.get("tokens") or []]

    def _check_tokenizer(self) -> None:
        """The served model must tokenise as ``model.teacher.name_or_path``'s tokenizer does (an alias in
        ``server.model`` could name any model): a probe text, compared apart from a leading BOS."""
        theirs = self._server_tokens(TOKENIZER_PROBE)
        if theirs is None:
            log.warning("the teacher's server has no tokenize endpoint: its tokenizer is not checked against "
                        "%s.name_or_path's", self.opts.setting)
            return
        bos = self.tokenizer.bos_token_id
        self.adds_bos = bool(theirs) and theirs[0] == bos
        mine = self.tokenizer(TOKENIZER_PROBE, add_special_tokens=False).input_ids
        if theirs[self.adds_bos:] != mine:
            where = f"{self.opts.setting}.name_or_path"
            raise ServerError(f"the teacher's server tokenises otherwise than {where}="
                              f"{self.tokenizer.name_or_path}'s tokenizer (a probe gave {theirs[:8]}… against "
                              f"{mine[:8]}…): serve {where}'s model, or name the served model's tokenizer there")

    def _text(self, ids: list[int]) -> str:
        """The text a llama.cpp server is sent for ``ids``: without their leading BOS when the server puts one
        before every text itself (GGUF ``add_bos_token``), so that it scores the very same tokens."""
        tok = self.tokenizer
        if self.adds_bos:
            if not ids or ids[0] != tok.bos_token_id:
                raise ServerError(f"the teacher's server puts {tok.bos_token!r} before every text, and these tokens "
                                  "do not start with it: it would score another sequence")
            ids = ids[1:]
        return tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    # -- scoring -------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def completion_forward(self, seq: Sequences, spec=None) -> CompletionForward:
        """The teacher's log-prob of every completion token ([B, T], 0 at masked positions) and, with ``top_k``,
        its top k ([B, T, k]). Log-probs are at temperature 1, as servers return them."""
        if spec is not None and spec.temperature != 1.0:
            raise ValueError("a served teacher's log-probs are at temperature 1")
        rows = [self._row(seq, i) for i in range(seq.input_ids.shape[0])]
        scored = self.client.map(self._score_one, rows)
        b, t, k = seq.completion_ids.shape[0], seq.completion_ids.shape[1], self.opts.top_k
        logp = torch.zeros(b, t)
        ids, top = torch.zeros(b, t, k, dtype=torch.long), torch.full((b, t, k), float("-inf"))
        for i, (lp, tk) in enumerate(scored):  # one tensor per sequence, not per position
            logp[i, : len(lp)] = torch.tensor(lp, dtype=torch.float32)
            if tk:
                ids[i, : len(tk)] = torch.tensor([[p[0] for p in pairs] for pairs in tk])
                top[i, : len(tk)] = torch.tensor([[p[1] for p in pairs] for pairs in tk])
        d = seq.completion_ids.device
        topk = TopK(ids.to(d), top.to(d)) if k else None
        entropy = torch.full((b, t), float("nan"), device=d)  # not returned by a server
        return CompletionForward(logp.to(d) * seq.completion_mask, entropy, None, topk)

    @staticmethod
    def _row(seq: Sequences, i: int) -> tuple[list[int], int]:
        """(unpadded prompt + completion ids, completion length) of row ``i``."""
        p = seq.prompt_len
        prompt = seq.input_ids[i, :p][seq.attention_mask[i, :p].bool()].tolist()
        n = int(seq.completion_mask[i].sum())
        return prompt + seq.completion_ids[i, :n].tolist(), n

    def _score_one(self, row: tuple[list[int], int]):
        ids, n = row
        if n == 0:
            return [], []
        return self._score_vllm(ids, n) if self.api == "vllm" else self._score_llama_cpp(ids, n)

    def _score_vllm(self, ids: list[int], n: int, k: int | None = None):
        k = self.opts.top_k if k is None else k
        out = self.client.call("/completions", {
            "model": self.opts.model, "prompt": ids, "max_tokens": 1, "temperature": 1.0,
            "prompt_logprobs": k, "return_token_ids": True})
        choice = self._choice(out)
        positions = choice.get("prompt_logprobs") or []
        if choice.get("prompt_token_ids") not in (None, ids):
            raise ServerError("the teacher's server changed the token ids it was sent (a tokenizer or prompt "
                              "setting on the server?)")
        if len(positions) != len(ids):
            raise ServerError(f"the teacher's server returned prompt log-probs for {len(positions)} positions of "
                              f"{len(ids)} sent")
        logp, top = [], []
        for pos in range(len(ids) - n, len(ids)):
            entry = positions[pos] or {}
            hit = entry.get(str(ids[pos]))
            if hit is None:
                raise ServerError(f"the teacher's server left out the sent token's log-prob at position {pos}")
            logp.append(float(hit["logprob"]))
            if k:
                best = sorted(((int(t), float(v["logprob"])) for t, v in entry.items()), key=lambda p: -p[1])[:k]
                if len(best) < k:
                    raise ServerError(f"the teacher's server returned {len(best)} top log-probs where "
                                      f"model.teacher.server.top_k={k} were asked")
                top.append(best)
        return logp, top

    def score(self, seqs: list[list[int]], spec=None) -> list[list[float]]:
        """The log-prob of every token after the first of each sequence (in this server's vocabulary), for a
        teacher with another tokenizer than the student's (``cross_tokenizer.CrossTokenizerTeacher``); nan where
        the server gives none (llama.cpp: a BOS token after the first)."""
        if spec is not None and spec.temperature != 1.0:
            raise ValueError("a served teacher's log-probs are at temperature 1")
        return self.client.map(self._score_all, seqs)

    def _score_all(self, ids: list[int]) -> list[float]:
        if self.api == "vllm":  # no top k: it would be in the teacher's vocabulary, which the student's is not
            return self._score_vllm(ids, len(ids) - 1, k=0)[0]
        return self._llama_cpp_logp(ids)[1:]

    def _score_llama_cpp(self, ids: list[int], n: int):
        tok = self.tokenizer
        logp = self._llama_cpp_logp(ids)[len(ids) - n:]
        if any(x != x for x in logp):  # nan: a BOS token inside the completion, whose entry the server leaves out
            raise ServerError(f"a completion holds the BOS token {tok.bos_token!r}, whose log-prob llama.cpp's "
                              "server leaves out: use a vLLM server")
        return logp, []

    def _llama_cpp_logp(self, ids: list[int]) -> list[float]:
        """llama.cpp's log-prob of each of ``ids`` (nan for the first and for every BOS token after it, which its
        echo leaves out), through its own tokenisation of their text."""
        tok, bos = self.tokenizer, self.tokenizer.bos_token_id
        text = self._text(ids)
        # the server's own tokenisation of the text (its extras endpoint): the one its log-probs are for, which
        # can differ from the sampled tokens and even from this tokenizer's (llama.cpp's pre-tokeniser differs)
        theirs = self.client.call(self.root + "/extras/tokenize", {"model": self.opts.model, "input": text})
        theirs = [int(t) for t in theirs.get("tokens") or []]
        if not theirs or theirs[0] != bos:
            raise ServerError("llama.cpp's server aligns echoed log-probs only for text that starts with the BOS "
                              f"token ({tok.bos_token!r}): use a chat-templated task or a vLLM server")
        out = self.client.call("/completions", {
            "model": self.opts.model, "prompt": text, "max_tokens": 1, "temperature": 0.0, "echo": True,
            "logprobs": 0})
        got = (self._choice(out).get("logprobs") or {}).get("token_logprobs") or []
        # one entry per token after the first, BOS tokens left out, then the generated token (if any)
        kept = [j for j in range(1, len(theirs)) if theirs[j] != bos]
        if len(got) not in (len(kept), len(kept) + 1):
            raise ServerError(f"the teacher's server returned log-probs for {len(got)} positions where {len(kept)} "
                              "were sent")
        their_logp = [float("nan")] * len(theirs)
        for j, x in zip(kept, got, strict=False):
            their_logp[j] = float("nan") if x is None else float(x)  # the first is null, as in OpenAI's API
        with self.lock:
            self.counts["sequences"] += 1
            self.counts["retokenized"] += theirs != ids
        return spread_over_tokens(tok, ids, theirs, their_logp)

    def _choice(self, out: dict) -> dict:
        if out.get("model") not in (None, self.opts.model) and self.api == "vllm":
            raise ServerError(f"the teacher's server answered for model {out.get('model')}, not {self.opts.model}")
        choices = out.get("choices") or []
        if not choices:
            raise ServerError(f"the teacher's server answered without choices: {_brief(out)}")
        return choices[0]

    def take_stats(self) -> dict[str, float]:
        """The share of sequences scored since the last call whose text tokenises otherwise than they were sampled
        (llama.cpp only: their teacher log-probs are the canonical tokenisation's, spread over the sampled tokens)."""
        with self.lock:
            n, r = self.counts["sequences"], self.counts["retokenized"]
            self.counts = {"sequences": 0, "retokenized": 0}
        return {"teacher_retokenized_rate": r / n} if self.api == "llama_cpp" and n else {}

    # -- sampling ------------------------------------------------------------------------------------------------

    def generate(self, prompts: list[list[int]], spec: SamplingSpec) -> list[list[Sample]]:
        """``spec.n`` completions of each prompt (token ids), in prompt order: the ``rollout.engines.Engine``
        protocol, so that ``EngineSampler`` lays them out as any rollout. Seeds come from torch's global
        generator, which the run seeds: the same run asks for the same samples."""
        seeds = torch.randint(0, 2**31 - 1, (len(prompts), spec.n)).tolist()
        jobs = [(p, spec, s) for p, s in zip(prompts, seeds, strict=True)]
        return self.client.map(self._generate_vllm if self.api == "vllm" else self._generate_llama_cpp, jobs)

    def load_weights(self, weights) -> None:
        raise ServerError("a served teacher's weights are the server's")

    def rollout(self, tokenizer, prompts: list[str], n: int, gen, device, add_special_tokens: bool = True):
        """The teacher's completions of ``prompts`` laid out as ``rollout.sampling.generate`` lays them out. They
        are data for the student (seqkd, gkd) or the teacher's own evaluation: no sampler log-probs go with them,
        since the update's importance weights correct the student's own samples only."""
        sampler = EngineSampler(self, tokenizer, device)
        sampler.stale = False  # nothing to push: the server holds the teacher
        out = sampler.sample(None, prompts, n, gen, add_special_tokens)
        out.sampler_logp = None
        return out

    def _sampling(self, spec: SamplingSpec) -> dict:
        # explicit: a server's defaults (llama.cpp: top_k 40, min_p 0.05, repeat penalty 1.1) would change the
        # distribution the teacher samples from
        return {"max_tokens": spec.max_tokens, "temperature": 0.0 if spec.greedy else spec.temperature,
                "top_p": 1.0 if spec.greedy else spec.top_p, "min_p": 0.0}

    def _generate_vllm(self, job) -> list[Sample]:
        prompt, spec, seeds = job
        out = self.client.call("/completions", {
            "model": self.opts.model, "prompt": prompt, "n": spec.n, "seed": seeds[0], "top_k": 0,
            "repetition_penalty": 1.0, "stop_token_ids": [spec.eos_token_id], "return_token_ids": True,
            "skip_special_tokens": False, **self._sampling(spec)})
        choices = sorted(out.get("choices") or [], key=lambda c: c.get("index", 0))
        if len(choices) != spec.n:
            raise ServerError(f"the teacher's server returned {len(choices)} completions where {spec.n} were asked")
        return [self._sample(c.get("token_ids") or [], c.get("finish_reason"), spec) for c in choices]

    def _generate_llama_cpp(self, job) -> list[Sample]:
        prompt, spec, seeds = job
        tok = self.tokenizer
        text = self._text(prompt)
        samples = []
        for seed in seeds:  # llama-cpp-python's server returns one completion per request
            out = self.client.call("/completions", {
                "model": self.opts.model, "prompt": text, "seed": seed, "top_k": 0, "repeat_penalty": 1.0,
                "stop": [], **self._sampling(spec)})
            choice = self._choice(out)
            ids = tok(choice.get("text") or "", add_special_tokens=False).input_ids
            samples.append(self._sample(ids, choice.get("finish_reason"), spec))
        return samples

    @staticmethod
    def _sample(ids: list[int], finish_reason, spec: SamplingSpec) -> Sample:
        """A completion laid out as sampled ones are: ending with EOS when the server stopped there."""
        ids = [int(t) for t in ids]
        if ids and ids[-1] == spec.eos_token_id:
            ids = ids[:-1]
        ids = ids[: spec.max_tokens]
        if finish_reason == "stop" and len(ids) < spec.max_tokens:
            ids.append(spec.eos_token_id)
        return Sample(ids, [0.0] * len(ids))


def connect(teacher_cfg, tokenizer, device="cpu", setting: str = "model.teacher") -> ServedTeacher:
    """The teacher served as ``teacher_cfg`` says; ``setting``: where those settings are, for what its errors name."""
    teacher = ServedTeacher(ServerOptions.from_config(teacher_cfg, setting), tokenizer, device)
    log.info("teacher served by %s at %s (%s)", teacher.opts.model, teacher.opts.base_url, teacher.api)
    return teacher


def is_served(model) -> bool:
    return isinstance(model, ServedTeacher)
