"""The pairwise judge: both orders, consistent wins only, failures never counted as ties."""

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from helpers import CONF
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from cdistill.eval.judge import (
    FAIL_FAST,
    HFJudge,
    JudgeError,
    OpenAIJudge,
    combine,
    judge_runs,
    parse_verdict,
)


def judge_cfg(**over):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("judge_run", ["run_a=a", "run_b=b"]).judge
    return OmegaConf.merge(cfg, over)


def write_run(path, solutions):
    path.mkdir(parents=True)
    with (path / "eval_samples.jsonl").open("w") as fh:
        for i, s in enumerate(solutions):
            fh.write(json.dumps({"question": f"q{i}", "gold": "1", "greedy": s, "greedy_correct": True,
                                 "samples": [{"text": s, "correct": True, "divergence": 0.0, "satisfied": True}]})
                     + "\n")
    return path


REFUSALS = {"unauthorized": 401, "forbidden": 403, "missing": 404}


class Stub(BaseHTTPRequestHandler):
    """An OpenAI-compatible endpoint with a scripted behaviour (``server.mode``)."""

    def do_POST(self):  # noqa: N802
        server = self.server
        server.calls += 1
        server.auth.append(self.headers.get("Authorization"))
        prompt = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["messages"][0]["content"]
        mode = server.mode
        if mode in REFUSALS:
            body = json.dumps({"error": {"message": f"scripted {mode}\nsecond line"}}).encode()
            self.send_response(REFUSALS[mode])
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if mode == "flaky" and server.calls <= 2 or mode == "down":
            self.send_response(500)
            self.end_headers()
            return
        if mode == "slow":
            time.sleep(1.0)
        if mode == "first":
            verdict = "[[1]]"
        else:
            first = re.search(r"\[Solution 1\]\n(.*?)\n", prompt).group(1)
            verdict = "[[1]]" if "GOOD" in first else "[[2]]"
        body = json.dumps({"choices": [{"message": {"content": f"reasoning...\n{verdict}"}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def stub():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Stub)
    server.calls, server.mode, server.auth = 0, "consistent", []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def runs(tmp_path):
    a = write_run(tmp_path / "a", ["GOOD one", "GOOD two", "GOOD three"])
    b = write_run(tmp_path / "b", ["bad one", "bad two", "bad three"])
    return a, b


def run_with(stub, runs, mode, **over):
    stub.mode = mode
    settings = {"base_url": f"http://127.0.0.1:{stub.server_address[1]}/v1", "backoff_s": 0.01, "timeout_s": 5,
                "api_key_env": None}
    cfg = judge_cfg(**{**settings, **over})
    return judge_runs(OpenAIJudge(cfg), cfg, *runs)


def test_verdict_parsing_and_combination():
    assert parse_verdict("blah [[2]]") == "2" and parse_verdict("[[1]] then [[TIE]]") == "tie"
    assert combine("1", "2") == "A" and combine("2", "1") == "B"
    assert combine("1", "1") == "tie" and combine("tie", "2") == "tie"


def test_consistent_judge_gives_wins_and_each_pair_is_judged_in_both_orders(stub, runs):
    summary, records = run_with(stub, runs, "consistent")
    assert summary["win_rate"] == 1.0 and summary["tie_rate"] == 0.0
    assert stub.calls == 6 and all(r["verdict_ab"] == "1" and r["verdict_ba"] == "2" for r in records)
    assert "[Problem]" in summary["template"]


def test_position_biased_judge_comes_out_as_ties(stub, runs):
    summary, _ = run_with(stub, runs, "first")
    assert summary["tie_rate"] == 1.0 and summary["win_rate"] == 0.0 and summary["loss_rate"] == 0.0


def test_transient_errors_are_retried(stub, runs):
    summary, _ = run_with(stub, runs, "flaky", retries=3)
    assert summary["win_rate"] == 1.0 and stub.calls == 8


def test_an_endpoint_that_stays_down_is_failed_not_tied(stub, runs):
    summary, records = run_with(stub, runs, "down", retries=1)
    assert summary["failed_rate"] == 1.0 and summary["tie_rate"] == 0.0
    assert "HTTP 500" in records[0]["error"] and "2 attempts" in records[0]["error"]


def test_a_judge_that_times_out_is_failed(stub, runs):
    summary, records = run_with(stub, runs, "slow", retries=0, timeout_s=0.2)
    assert summary["failed_rate"] == 1.0 and "cannot reach" in records[0]["error"]


def test_unreachable_endpoint_is_failed(runs):
    cfg = judge_cfg(base_url="http://127.0.0.1:9/v1", retries=0, timeout_s=1, api_key_env=None)
    summary, _ = judge_runs(OpenAIJudge(cfg), cfg, *runs)
    assert summary["failed_rate"] == 1.0


def test_tiny_local_model_judge_is_deterministic(tmp_path, runs):
    from cdistill.models.embedded import build_tokenizer, tiny_llama

    tok = build_tokenizer(["[[1]] [[2]] [[tie]] GOOD bad one two three solution problem"], 300)
    model = tiny_llama(tok, OmegaConf.create({"hidden": 16, "intermediate": 32, "layers": 1, "heads": 2,
                                              "max_positions": 1024}), seed=0)
    model.save_pretrained(tmp_path / "judge")
    tok.save_pretrained(tmp_path / "judge")
    cfg = judge_cfg(backend="hf", model=str(tmp_path / "judge"), max_new_tokens=6)
    first = judge_runs(HFJudge(cfg), cfg, *runs)
    second = judge_runs(HFJudge(cfg), cfg, *runs)
    assert first == second
    for r in first[1]:
        assert r["winner"] in {"A", "B", "tie", "failed"}
        assert (r["winner"] == "failed") == ("error" in r)


KEY = "CDISTILL_TEST_JUDGE_KEY"  # a variable of the tests' own, so a key in the environment cannot leak in


def judge_command(runs, *overrides, key=None):
    """``cdistill judge`` on ``runs`` in a subprocess, with ``key`` (or no key) in the ``KEY`` variable."""
    a, b = runs
    env = {k: v for k, v in os.environ.items() if k != KEY}
    if key is not None:
        env[KEY] = key
    return subprocess.run([sys.executable, "-m", "cdistill.cli", "judge", f"run_a={a}", f"run_b={b}",
                           f"judge.api_key_env={KEY}", "judge.backoff_s=0.01", *overrides],
                          capture_output=True, text=True, timeout=120, env=env)


def stub_url(stub):
    return f"judge.base_url=http://127.0.0.1:{stub.server_address[1]}/v1"


def one_line_error(r):
    """The command's error line, after checking that it failed as a user error and said nothing more."""
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-1500:]
    errors = [line for line in r.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith("cdistill: error: "), r.stderr[-1500:]
    return errors[0]


def test_judge_command_writes_its_results_where_the_report_finds_them(stub, runs):
    from cdistill.eval.report import latest_judgement

    a, b = runs
    (a / "summary.json").write_text(json.dumps({"method": "cmdp", "threshold": 5}))
    stub.mode = "consistent"
    r = judge_command(runs, stub_url(stub), key="sk-test")
    assert r.returncode == 0, r.stderr[-1500:]
    assert "win 1.000" in r.stdout
    assert stub.auth == ["Bearer sk-test"] * 6  # the key is sent as a bearer token
    (out,) = (a / "judge").glob("*/judge.json")
    assert json.loads(out.read_text())["win_rate"] == 1.0
    assert len((out.parent / "judge_samples.jsonl").read_text().splitlines()) == 3
    assert latest_judgement(a) == "1.00/0.00/0.00 vs b"  # what the report's list of runs shows


def test_judge_command_against_an_unreachable_endpoint_stops_early_with_one_line(runs):
    a, b = runs
    (a / "judge" / "earlier").mkdir(parents=True)
    (a / "judge" / "earlier" / "judge.json").write_text('{"an": "earlier judgement"}')
    r = judge_command(runs, "judge.base_url=http://127.0.0.1:9/v1", "judge.retries=0", "judge.timeout_s=1",
                      "judge.api_key_env=null")
    assert one_line_error(r).startswith("cdistill: error: every judgement failed (cannot reach "
                                        "http://127.0.0.1:9/v1/chat/completions")
    # what was tried is recorded, but no judge.json: the report would show it instead of the earlier judgement
    (tried,) = (a / "judge").glob("*/judge_samples.jsonl")
    assert [json.loads(line)["winner"] for line in tried.read_text().splitlines()] == ["failed"] * FAIL_FAST
    assert [p.parent.name for p in (a / "judge").glob("*/judge.json")] == ["earlier"]


def test_a_missing_key_is_refused_before_any_request(stub, runs):
    a, _ = runs
    r = judge_command(runs, stub_url(stub))  # the key variable is unset
    line = one_line_error(r)
    assert f"judge.api_key_env={KEY}: that environment variable is not set" in line
    assert stub.calls == 0
    assert not list((a / "judge").glob("*/judge*"))  # nothing judged, nothing written


def test_a_rejected_key_stops_at_the_first_request(stub, runs):
    a, _ = runs
    stub.mode = "unauthorized"
    r = judge_command(runs, stub_url(stub), key="sk-wrong")
    assert stub.calls == 1  # not once per problem, nor once per retry
    line = one_line_error(r)
    assert "HTTP 401" in line and f"${KEY} (judge.api_key_env)" in line and "scripted unauthorized" in line
    assert not list((a / "judge").glob("*/judge*"))


@pytest.mark.parametrize("mode, setting", [("forbidden", "judge.model=gpt-4o-mini"),
                                           ("missing", "judge.base_url=http://127.0.0.1:")])
def test_a_forbidden_or_missing_model_or_route_stops_at_the_first_request(stub, runs, mode, setting):
    with pytest.raises(JudgeError, match=f"HTTP {REFUSALS[mode]}") as e:
        run_with(stub, runs, mode)
    assert stub.calls == 1 and setting in str(e.value) and "\n" not in str(e.value)


@pytest.fixture
def lookups(monkeypatch):
    """Host names looked up; ``.invalid`` (RFC 6761) answers what a resolver says of it whatever this machine's
    network, ``.retry`` what a resolver that did not answer says."""
    looked, real = [], socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        looked.append(host)
        if host.endswith(".invalid"):
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        if host.endswith(".retry"):
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return looked


def test_a_host_that_does_not_resolve_stops_at_the_first_attempt(runs, lookups):
    cfg = judge_cfg(base_url="http://nonexistent.invalid/v1", retries=3, backoff_s=0.01, api_key_env=None)
    with pytest.raises(JudgeError, match="judge.base_url=http://nonexistent.invalid/v1") as e:
        judge_runs(OpenAIJudge(cfg), cfg, *runs)
    assert "nonexistent.invalid does not resolve" in str(e.value) and "\n" not in str(e.value)
    assert lookups == ["nonexistent.invalid"]


def test_a_dns_server_that_does_not_answer_is_retried(runs, lookups):
    cfg = judge_cfg(base_url="http://judge.retry/v1", retries=2, backoff_s=0.01, api_key_env=None)
    summary, records = judge_runs(OpenAIJudge(cfg), cfg, *runs)
    assert summary["failed_rate"] == 1.0 and "Temporary failure" in records[0]["error"]
    assert len(lookups) == FAIL_FAST * 3


def test_transient_errors_keep_their_retries_through_the_command_without_a_key(stub, runs):
    stub.mode = "flaky"  # the first two requests get HTTP 500
    r = judge_command(runs, stub_url(stub), "judge.retries=3", "judge.api_key_env=null")
    assert r.returncode == 0, r.stderr[-1500:]
    assert "win 1.000" in r.stdout
    assert stub.calls == 2 + 6 and stub.auth == [None] * 8


def test_a_base_url_that_is_not_an_http_url_is_refused_before_any_request():
    with pytest.raises(JudgeError, match="judge.base_url=api.openai.com/v1 is not an http"):
        OpenAIJudge(judge_cfg(base_url="api.openai.com/v1", api_key_env=None))


def test_judging_stops_after_the_first_problems_all_fail(tmp_path):
    a = write_run(tmp_path / "a", [f"GOOD {i}" for i in range(6)])
    b = write_run(tmp_path / "b", [f"bad {i}" for i in range(6)])
    calls = []

    def down(prompt):
        calls.append(prompt)
        raise JudgeError("cannot reach the endpoint")

    summary, records = judge_runs(down, judge_cfg(), a, b)
    assert len(records) == FAIL_FAST < 6 and len(calls) == FAIL_FAST and summary["failed_rate"] == 1.0
