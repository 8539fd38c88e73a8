"""An HTTP server that answers ``/v1/models`` and ``/v1/completions`` in vLLM's format, computed by a Hugging Face
model in this process: vLLM itself needs a GPU, so this is how the vLLM side of ``model.teacher.backend=server`` is
tested on CPU (the real server in the tests is llama.cpp's, ``tests/test_served_teacher.py``).

The format is vLLM 0.33's (``entrypoints/openai/completion/protocol.py``): ``prompt`` as token ids;
``prompt_logprobs=k`` gives, per prompt position, null first and then ``{"<token id>": {"logprob", "rank",
"decoded_token"}}`` holding the given token and the top k; ``return_token_ids`` adds ``prompt_token_ids`` and each
choice's ``token_ids``; ``n`` completions per request, stopping at ``stop_token_ids`` (kept in ``token_ids``).

``/tokenize`` (vLLM's, beside ``/v1``) tokenises a text. ``faults`` injects what a real deployment does:
``{"unavailable": 2}`` answers the next two requests with HTTP 503, ``{"drop_positions": 1}`` returns one position
fewer than sent, ``{"model": "other"}`` answers for another model, ``{"tokenizer": 1}`` serves a model whose
tokenizer is another (ids shifted by one).

``api="llama_cpp"`` answers as llama-cpp-python's server does instead (0.3.36): text prompts, ``/extras/tokenize``
beside ``/v1`` (its tokenizer's BOS added), and ``echo`` with ``logprobs`` giving ``token_logprobs`` for every token
of the text after the first, BOS tokens left out, the first entry null (``llama_cpp.Llama._create_completion``).
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch


class FakeVLLM:
    def __init__(self, model, tokenizer, name: str = "teacher", api: str = "vllm"):
        self.model, self.tokenizer, self.name, self.api = model.eval(), tokenizer, name, api
        self.faults: dict = {}
        self.max_model_len = model.config.max_position_embeddings  # vLLM's default: the model's own context
        self.requests: list[dict] = []
        self.lock = threading.Lock()  # one forward at a time, as one engine
        handler = self._handler()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    # -- answers ---------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def logprobs(self, ids: list[int]) -> torch.Tensor:
        """[len(ids), V] log-probs; row p is the distribution of token p given ids[:p] (row 0 unused)."""
        logits = self.model(torch.tensor([ids])).logits[0].float()
        lp = torch.log_softmax(logits[:, : len(self.tokenizer)], -1)
        return torch.cat([torch.zeros_like(lp[:1]), lp[:-1]])

    def prompt_logprobs(self, ids: list[int], k: int) -> list:
        lp = self.logprobs(ids)
        out = [None]
        for p in range(1, len(ids)):
            row = lp[p]
            ranks = (row > row[ids[p]]).sum() + 1
            entry = {str(ids[p]): {"logprob": float(row[ids[p]]), "rank": int(ranks),
                                   "decoded_token": self.tokenizer.decode([ids[p]])}}
            if k:
                top = torch.topk(row, k)
                for r, (v, t) in enumerate(zip(top.values.tolist(), top.indices.tolist(), strict=True)):
                    entry[str(t)] = {"logprob": v, "rank": r + 1, "decoded_token": self.tokenizer.decode([t])}
            out.append(entry)
        return out

    @torch.no_grad()
    def sample(self, ids: list[int], body: dict, seed: int) -> dict:
        g = torch.Generator().manual_seed(seed)
        out, stop = [], set(body.get("stop_token_ids") or [])
        finish = "length"
        for _ in range(body.get("max_tokens", 16)):
            logits = self.model(torch.tensor([ids + out])).logits[0, -1, : len(self.tokenizer)].float()
            t = body.get("temperature", 1.0)
            tok = int(logits.argmax()) if t == 0 else int(torch.multinomial(torch.softmax(logits / t, -1), 1,
                                                                              generator=g))
            out.append(tok)
            if tok in stop:
                finish = "stop"
                break
        return {"text": self.tokenizer.decode(out, skip_special_tokens=True), "token_ids": out,
                "finish_reason": finish}

    def echo(self, body: dict) -> tuple[int, dict]:
        """llama.cpp's scoring: the prompt text tokenised with BOS, its log-probs echoed without BOS tokens."""
        if not (body.get("echo") and body.get("max_tokens") == 1 and isinstance(body["prompt"], str)):
            return 400, {"error": "this fake scores echoed text prompts only"}
        ids = self.tokenizer(body["prompt"]).input_ids
        with self.lock:
            lp = self.logprobs(ids)
        bos = self.tokenizer.bos_token_id
        got = [float(lp[p, ids[p]]) for p in range(1, len(ids)) if ids[p] != bos]
        got[:1] = [None] * len(got[:1])  # "the first is null", though it is the second token's
        return 200, {"id": "cmpl-fake", "object": "text_completion", "model": body["model"],
                     "choices": [{"index": 0, "text": "", "logprobs": {"token_logprobs": got},
                                  "finish_reason": "length"}]}

    def complete(self, body: dict) -> tuple[int, dict]:
        if body.get("stream"):
            return 400, {"error": "stream not supported here"}
        if self.api == "llama_cpp":
            return self.echo(body)
        ids = body["prompt"]
        if not (isinstance(ids, list) and all(isinstance(t, int) for t in ids)):
            return 400, {"error": "this fake takes token-id prompts only"}
        with self.lock:
            choices = []
            if body.get("prompt_logprobs") is not None:
                lps = self.prompt_logprobs(ids, int(body["prompt_logprobs"]))
                if self.faults.get("drop_positions"):
                    lps = lps[: -self.faults["drop_positions"]]
                choices.append({"index": 0, "text": "", "prompt_logprobs": lps, "finish_reason": "length",
                                "prompt_token_ids": ids, "token_ids": []})
            else:
                seed = int(body.get("seed") or 0)
                for i in range(int(body.get("n", 1))):
                    choices.append({"index": i, **self.sample(ids, body, seed * 1000003 + i), "prompt_token_ids": ids})
        return 200, {"id": "cmpl-fake", "object": "text_completion", "model": self.faults.get("model", body["model"]),
                     "choices": choices, "usage": {}}

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def send(self, status: int, payload: dict):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def unavailable(self) -> bool:
                with fake.lock:
                    if fake.faults.get("unavailable", 0) > 0:
                        fake.faults["unavailable"] -= 1
                        return True
                return False

            def do_GET(self):
                if self.unavailable():
                    return self.send(503, {"error": "loading"})
                if self.path == "/v1/models":
                    return self.send(200, {"object": "list", "data": [
                        {"id": fake.name, "object": "model", "owned_by": "vllm" if fake.api == "vllm" else "me",
                         **({"max_model_len": fake.max_model_len} if fake.api == "vllm" else {})}]})
                self.send(404, {"error": "not found"})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), **body})
                if self.unavailable():
                    return self.send(503, {"error": "loading"})
                if self.path == "/extras/tokenize" and fake.api == "llama_cpp":
                    return self.send(200, {"tokens": fake.tokenizer(body["input"]).input_ids})
                if self.path == "/tokenize" and fake.api == "vllm":
                    ids = fake.tokenizer(body["prompt"], add_special_tokens=body.get("add_special_tokens", True))
                    tokens = [t + fake.faults.get("tokenizer", 0) for t in ids.input_ids]
                    return self.send(200, {"count": len(tokens), "max_model_len": 512, "tokens": tokens})
                if self.path != "/v1/completions":
                    return self.send(404, {"error": "not found"})
                if body.get("model") != fake.name:
                    return self.send(404, {"error": f"The model `{body.get('model')}` does not exist."})
                self.send(*fake.complete(body))

        return Handler
