"""A teacher behind an inference server (model.teacher.backend=server), against a vLLM-format server computed by
the embedded teacher in this process (``fake_vllm_server``): the same log-probs and training as the teacher in
process, its top k, retries and one-line failures. The real llama.cpp server is ``test_llama_cpp_teacher.py``."""

import json
import socket
import subprocess
import sys

import pytest
import torch
from fake_vllm_server import FakeVLLM
from helpers import tiny_cfg

from cdistill.config import ConfigError, validate
from cdistill.models.forward import completion_forward
from cdistill.models.loading import build_components, load_model, load_tokenizer, resolve_model_path
from cdistill.models.served import ServedTeacher, ServerError, ServerOptions
from cdistill.objectives.costs import kl_from_logprobs, token_kl_cost
from cdistill.objectives.divergences import generalized_jsd
from cdistill.objectives.topk import TopK, coarsened, topk_token_jsd_cost, topk_token_kl_cost
from cdistill.rollout.sampling import generate, generation_config
from cdistill.rollout.sources import TeacherSolutions
from cdistill.train import train

# -- the coarsened divergences (pure) ----------------------------------------------------------------------------


def _rows(n=6, v=11, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.log_softmax(torch.randn(n, v, generator=g) * 2, -1),
            torch.log_softmax(torch.randn(n, v, generator=g) * 2, -1))


@pytest.mark.parametrize("k", [1, 3, 10])
def test_coarsened_kl_and_jsd_are_lower_bounds_of_the_exact_ones(k):
    s, t = _rows()
    ids = torch.topk(t, k).indices
    cs, ct = coarsened(s, ids, t.gather(1, ids))
    assert torch.allclose(cs.exp().sum(1), torch.ones(6), atol=1e-6)
    assert torch.allclose(ct.exp().sum(1), torch.ones(6), atol=1e-6)
    assert (kl_from_logprobs(cs, ct) <= kl_from_logprobs(s, t) + 1e-5).all()
    for beta in (0.0, 0.5, 1.0):
        assert (generalized_jsd(cs, ct, beta) <= generalized_jsd(s, t, beta) + 1e-5).all()


def test_coarsened_divergences_equal_the_exact_ones_when_k_is_the_vocabulary_with_a_finite_gradient():
    s, t = _rows(v=7)
    s = s.clone().requires_grad_(True)
    ids = torch.argsort(t, 1, descending=True)
    cs, ct = coarsened(s, ids, t.gather(1, ids))
    approx, exact = kl_from_logprobs(cs, ct), kl_from_logprobs(s, t)
    assert torch.allclose(approx, exact, atol=1e-5)
    assert torch.allclose(generalized_jsd(cs, ct, 0.5), generalized_jsd(s, t, 0.5), atol=1e-5)
    (g_approx,) = torch.autograd.grad(approx.sum(), s, retain_graph=True)
    (g_exact,) = torch.autograd.grad(exact.sum(), s)
    assert torch.isfinite(g_approx).all() and torch.allclose(g_approx, g_exact, atol=1e-5)


def test_the_rest_class_holds_exactly_the_mass_outside_the_top_k():
    s, t = _rows(n=1, v=5)
    ids = torch.tensor([[3, 0]])
    cs, ct = coarsened(s, ids, t.gather(1, ids))
    rest = [1, 2, 4]
    assert torch.allclose(cs[0, 2].exp(), s[0, rest].exp().sum())
    assert torch.allclose(ct[0, 2].exp(), t[0, rest].exp().sum(), atol=1e-6)


def test_topk_costs_from_hidden_states_match_the_coarsening_of_the_exact_rows():
    g = torch.Generator().manual_seed(3)
    hs, ht = torch.randn(2, 4, 8, generator=g), torch.randn(2, 4, 8, generator=g)
    ws, wt = torch.randn(13, 8, generator=g), torch.randn(13, 8, generator=g)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]]).bool()
    t_rows = torch.log_softmax(ht @ wt.t(), -1)
    top = torch.topk(t_rows, 13)  # k = V: the exact token_kl
    exact = token_kl_cost(hs, ws, ht, wt, mask, chunk=3)
    approx = topk_token_kl_cost(hs, ws, TopK(top.indices, top.values), mask, chunk=3)
    assert torch.allclose(approx, exact, atol=1e-5)
    top4 = torch.topk(t_rows, 4)
    kl4 = topk_token_kl_cost(hs, ws, TopK(top4.indices, top4.values), mask, chunk=2)
    jsd4 = topk_token_jsd_cost(hs, ws, TopK(top4.indices, top4.values), mask, 0.5, chunk=2)
    assert (kl4 <= exact + 1e-5).all() and (kl4[~mask] == 0).all() and (jsd4[~mask] == 0).all()
    assert (kl4[mask] > 0).all()


# -- a vLLM-format server ----------------------------------------------------------------------------------------


@pytest.fixture
def embedded(tmp_path, cache):
    cfg = tiny_cfg(tmp_path, cache=cache)
    path = resolve_model_path("embedded:teacher", cfg)
    return cfg, load_model(path), load_tokenizer(path)


def _served(fake, tok, **options) -> ServedTeacher:
    opts = {"base_url": fake.base_url, "model": fake.name, "retries": 2, "backoff": 0.01, "timeout": 30.0, **options}
    return ServedTeacher(ServerOptions(**opts), tok)


def _rollout(cfg, parts, n=3):
    prompts = [parts.task.prompt(p) for p in parts.task.test[:4]]
    gen = generation_config(parts.tokenizer, cfg.rollout.max_new_tokens, 1.0, 1.0, False)
    return generate(parts.student, parts.tokenizer, prompts, n, gen, "cpu", parts.task.add_special_tokens)


def _train_steps(run) -> list[dict]:
    """The training steps' records of a run's metrics.jsonl (evaluations left out)."""
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"time_step"' in line]


def test_served_log_probs_and_top_k_are_the_in_process_teachers(tmp_path, cache, embedded):
    cfg, teacher, tok = embedded
    parts = build_components(cfg)
    rollout = _rollout(cfg, parts)
    local = completion_forward(parts.teacher, rollout.seq)
    with FakeVLLM(teacher, tok) as fake:
        served = _served(fake, tok, top_k=5)
        assert served.api == "vllm"
        got = served.completion_forward(rollout.seq)
    mask = rollout.seq.completion_mask
    assert torch.allclose(got.logp, local.logp * mask, atol=1e-5)
    assert got.hidden is None
    # the top 5 at every position: the in-process teacher's five most likely tokens, their log-probs
    rows = torch.log_softmax(local.hidden @ parts.teacher.get_output_embeddings().weight.t(), -1)
    top = torch.topk(rows, 5)
    assert torch.equal(got.topk.ids[mask], top.indices[mask])
    assert torch.allclose(got.topk.logp[mask], top.values[mask], atol=1e-5)
    # token ids went over the wire, one request per sequence, asking for the top 5
    scored = [r for r in fake.requests if r["path"] == "/v1/completions" and r.get("prompt_logprobs") is not None]
    assert len(scored) == mask.shape[0] and all(r["prompt_logprobs"] == 5 for r in scored)
    assert all(isinstance(t, int) for r in scored for t in r["prompt"])


def test_training_against_a_served_teacher_matches_the_teacher_in_process(tmp_path, cache, embedded):
    _, teacher, tok = embedded
    common = ["method=lagrangian", "optim.steps=3", "eval.at_start=true"]
    for run in ("local", "served"):
        (tmp_path / run).mkdir()
    local = tiny_cfg(tmp_path, *common, cache=cache)
    train(local, tmp_path / "local")
    with FakeVLLM(teacher, tok) as fake:
        served = tiny_cfg(tmp_path, *common, "model.teacher.backend=server",
                          f"model.teacher.server.base_url={fake.base_url}", "model.teacher.server.model=teacher",
                          cache=cache)
        summary = train(served, tmp_path / "served")

    a, b = _train_steps(tmp_path / "local"), _train_steps(tmp_path / "served")
    assert len(a) == len(b) == 3
    for x, y in zip(a, b, strict=True):
        for key in ("reward", "divergence_mean", "sampled_kl_per_token", "lambda", "loss", "grad_norm"):
            assert y[key] == pytest.approx(x[key], rel=1e-4, abs=1e-5), key
    local_summary = json.loads((tmp_path / "local" / "summary.json").read_text())
    # the teacher's sampled accuracy is left out: the server draws its samples with its own generator
    for key in ("accuracy_sampled", "divergence_mean", "teacher_accuracy_greedy"):
        assert summary[key] == pytest.approx(local_summary[key], abs=1e-4), key
    # re-evaluated later, with the teacher served elsewhere (teacher_url): the same report as at training's end
    with FakeVLLM(teacher, tok) as moved:
        r = subprocess.run([sys.executable, "-m", "cdistill.cli", "eval", f"run_dir={tmp_path / 'served'}",
                            f"teacher_url={moved.base_url}"], capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
        assert moved.requests  # it was this server that scored
    (out,) = (tmp_path / "served" / "eval").glob("*/eval.json")
    evaluated, trained = json.loads(out.read_text()), json.loads((tmp_path / "served" / "eval.json").read_text())
    assert evaluated["divergence_mean"] == pytest.approx(trained["divergence_mean"], abs=1e-6)
    # the recorded URL is dead now: without the override, one line
    r = subprocess.run([sys.executable, "-m", "cdistill.cli", "eval", f"run_dir={tmp_path / 'served'}"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "unreachable at http://127.0.0.1:" in r.stderr


@pytest.mark.parametrize("method", [
    ["method=gkd", "method.on_policy_fraction=0.0", "model.teacher.server.top_k=8"],
    ["method=seqkd"],
    ["method=opd", "method.estimator=full", "constraint.cost=token_kl", "model.teacher.server.top_k=8"],
])
def test_methods_that_need_teacher_samples_or_its_distribution_train_against_a_served_teacher(
        tmp_path, cache, embedded, method):
    _, teacher, tok = embedded
    with FakeVLLM(teacher, tok) as fake:
        cfg = tiny_cfg(tmp_path, *method, "eval.at_start=false", "model.teacher.backend=server",
                       f"model.teacher.server.base_url={fake.base_url}", "model.teacher.server.model=teacher",
                       cache=cache)
        (tmp_path / "run").mkdir()
        summary = train(cfg, tmp_path / "run")
        sampled = [r for r in fake.requests if r["path"] == "/v1/completions" and r.get("prompt_logprobs") is None]
    assert summary["steps"] == 2
    if method[0] in ("method=gkd", "method=seqkd"):  # the teacher's completions came from the server
        assert sampled and all(r["stop_token_ids"] == [tok.eos_token_id] for r in sampled)
    if method[0] == "method=seqkd":  # cached apart from the in-process teacher's solutions
        assert TeacherSolutions(cache, "served:teacher", cfg.rollout.max_new_tokens).path.is_file()


def test_transient_failures_are_retried_and_a_dead_server_is_one_line(embedded):
    _, teacher, tok = embedded
    with FakeVLLM(teacher, tok) as fake:
        fake.faults["unavailable"] = 2
        served = _served(fake, tok, retries=2)  # /models: two 503s, then an answer
        assert served.api == "vllm"
        fake.faults["unavailable"] = 3
        with pytest.raises(ServerError, match=r"server at .*/v1/models failed 3 tries \(HTTP 503 .*loading"):
            _served(fake, tok, retries=2)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    opts = ServerOptions(base_url=f"http://127.0.0.1:{port}/v1", model="teacher", retries=1, backoff=0.01)
    with pytest.raises(ServerError, match=r"unreachable at http://127.0.0.1:\d+/v1/models after 2 tries "
                                          r"\(ConnectError.*is it running"):
        ServedTeacher(opts, tok)


def test_a_server_for_another_model_or_short_of_positions_is_refused(tmp_path, cache, embedded):
    cfg, teacher, tok = embedded
    parts = build_components(cfg)
    rollout = _rollout(cfg, parts, n=1)
    with FakeVLLM(teacher, tok) as fake:
        with pytest.raises(ServerError, match="serves teacher, not Qwen/Qwen2.5-Math-7B-Instruct"):
            _served(fake, tok, model="Qwen/Qwen2.5-Math-7B-Instruct")
        served = _served(fake, tok)
        fake.faults["drop_positions"] = 1
        with pytest.raises(ServerError, match=r"prompt log-probs for \d+ positions of \d+ sent"):
            served.completion_forward(rollout.seq)
        fake.faults.clear()
        fake.faults["model"] = "another"
        with pytest.raises(ServerError, match="answered for model another, not teacher"):
            served.completion_forward(rollout.seq)


def test_a_served_model_with_another_tokenizer_is_refused(embedded):
    _, teacher, tok = embedded
    with FakeVLLM(teacher, tok) as fake:
        fake.faults["tokenizer"] = 1
        with pytest.raises(ServerError, match="tokenises otherwise than model.teacher.name_or_path"):
            _served(fake, tok)


def test_how_a_served_teacher_is_reached_is_not_part_of_a_checkpoints_configuration(tmp_path):
    from omegaconf import OmegaConf

    from cdistill.checkpoint import fingerprint

    served = ["model.teacher.backend=server", "model.teacher.server.top_k=5"]
    a = fingerprint(tiny_cfg(tmp_path, *served))
    assert a == fingerprint(tiny_cfg(tmp_path, *served, "model.teacher.server.base_url=http://elsewhere:9/v1",
                                     "model.teacher.server.timeout=5", "model.teacher.server.retries=1"))
    assert a != fingerprint(tiny_cfg(tmp_path, *served[:1], "model.teacher.server.top_k=6"))  # what it computes
    # a local teacher's configuration is fingerprinted as before these settings existed (older checkpoints resume)
    local = tiny_cfg(tmp_path)
    older = OmegaConf.to_container(local)
    del older["model"]["teacher"]["backend"], older["model"]["teacher"]["server"]
    assert fingerprint(local) == fingerprint(OmegaConf.create(older))


def test_the_api_key_is_read_from_the_named_environment_variable(embedded, monkeypatch):
    _, teacher, tok = embedded
    with FakeVLLM(teacher, tok) as fake:
        with pytest.raises(ServerError, match="api_key_env=TEACHER_KEY: that environment variable is not set"):
            _served(fake, tok, api_key_env="TEACHER_KEY")
        monkeypatch.setenv("TEACHER_KEY", "s3cret")
        served = _served(fake, tok, api_key_env="TEACHER_KEY")
        served.generate([[1, 2, 3]], _spec(tok))
    assert fake.requests[-1]["auth"] == "Bearer s3cret"


def _spec(tok):
    from cdistill.rollout.engines import SamplingSpec

    return SamplingSpec(n=2, max_tokens=4, temperature=1.0, top_p=1.0, greedy=False, eos_token_id=tok.eos_token_id)


@pytest.mark.parametrize("overrides, message", [
    (["constraint.cost=token_kl"], "constraint.cost=token_kl needs the teacher's distribution at every position"),
    (["method=gkd"], "gkd's JSD needs the teacher's distribution"),
    (["method=opd", "method.estimator=full", "constraint.cost=token_kl"], "needs the teacher's distribution"),
    (["method=saute"], "runs the teacher beside the student at every sampled token"),
    (["method=weakest_link"], "weakest_link's exact term reads the teacher's NLL of every candidate token"),
    (["method=weakest_link", "method.exact_weight=0"], "use model.teacher.backend=local"),
    (["model.teacher.server.base_url=localhost:8000"], "model.teacher.server.base_url must contain ://"),
    (["model.teacher.server.top_k=-1"], "model.teacher.server.top_k must be a whole number >= 0"),
])
def test_what_a_served_teacher_cannot_give_is_refused_in_one_line(tmp_path, overrides, message):
    cfg = tiny_cfg(tmp_path, "model.teacher.backend=server", *overrides)
    with pytest.raises(ConfigError, match=message) as e:
        validate(cfg)
    assert "\n" not in str(e.value)


def test_a_top_k_makes_the_full_distribution_terms_acceptable(tmp_path):
    validate(tiny_cfg(tmp_path, "model.teacher.backend=server", "constraint.cost=token_kl",
                      "model.teacher.server.top_k=20"))
    validate(tiny_cfg(tmp_path, "model.teacher.backend=server", "method=gkd", "model.teacher.server.top_k=20"))


def test_a_top_k_id_beyond_the_shared_vocabulary_is_a_class_the_student_never_produces():
    s, t = _rows(n=2, v=6)
    ids = torch.tensor([[0, 6], [9, 2]])  # 6 and 9: padded rows of a larger teacher head
    t_top = torch.log(torch.tensor([[0.5, 0.2], [0.1, 0.6]]))
    cs, ct = coarsened(s, ids, t_top)
    assert cs[0, 1] == cs[1, 0] == -1.0e4  # no student mass there
    assert torch.allclose(cs[0, 0], s[0, 0]) and torch.allclose(cs[0, 2].exp(), s[0, 1:].exp().sum())
    assert torch.allclose(cs[1, 2].exp(), s[1, [0, 1, 3, 4, 5]].exp().sum())
    assert torch.allclose(ct[:, 2].exp(), torch.tensor([0.3, 0.3]))
    assert torch.isfinite(kl_from_logprobs(cs, ct)).all()


@pytest.mark.parametrize("method", [["method=gkd", "method.on_policy_fraction=1.0"],  # the teacher samples elsewhere
                                    ["method=cmdp", "constraint.cost=token_kl"]])
def test_with_the_whole_vocabulary_as_its_top_k_a_served_teacher_trains_as_the_teacher_in_process(
        tmp_path, cache, embedded, method):
    _, teacher, tok = embedded
    common = [*method, "eval.at_start=false", "optim.steps=2"]
    for run in ("local", "served"):
        (tmp_path / run).mkdir()
    train(tiny_cfg(tmp_path, *common, cache=cache), tmp_path / "local")
    with FakeVLLM(teacher, tok) as fake:
        train(tiny_cfg(tmp_path, *common, "model.teacher.backend=server",
                       f"model.teacher.server.base_url={fake.base_url}",
                       "model.teacher.server.model=teacher", f"model.teacher.server.top_k={len(tok)}", cache=cache),
              tmp_path / "served")

    a, b = _train_steps(tmp_path / "local"), _train_steps(tmp_path / "served")
    assert len(a) == len(b) == 2
    for x, y in zip(a, b, strict=True):
        for key in ("loss", "grad_norm", "divergence_mean"):
            k = key if key in x else f"offpolicy/{key}"
            assert y[k] == pytest.approx(x[k], rel=1e-3, abs=1e-4), key


def test_a_served_teacher_shorter_than_prompt_plus_generation_is_refused_before_the_student_loads(
        tmp_path, cache, embedded, monkeypatch):
    from cdistill.models import ModelError, loading

    _, teacher, tok = embedded
    with FakeVLLM(teacher, tok) as fake:
        fake.max_model_len = 140  # what vLLM lists for a model started with --max-model-len 140
        cfg = tiny_cfg(tmp_path, "model.teacher.backend=server", f"model.teacher.server.base_url={fake.base_url}",
                       "model.teacher.server.model=teacher", "rollout.max_new_tokens=25", cache=cache)
        monkeypatch.setattr(loading, "load_model", lambda *a, **k: pytest.fail("the student was loaded"))
        with pytest.raises(ModelError, match=r"^rollout.max_new_tokens=25: the longest prompt \(\w+ problem \d+, "
                                             r"\d+ tokens\) and 25 new tokens need \d+ positions, and the teacher's "
                                             r"server \(max_model_len\) holds 140; set rollout.max_new_tokens to at "
                                             r"most \d+$"):
            loading.build_components(cfg)
