"""The pairwise judge: both orders, consistent wins only, failures never counted as ties."""

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from helpers import CONF
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from cdistill.eval.judge import FAIL_FAST, HFJudge, JudgeError, OpenAIJudge, combine, judge_runs, parse_verdict


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


class Stub(BaseHTTPRequestHandler):
    """An OpenAI-compatible endpoint with a scripted behaviour (``server.mode``)."""

    def do_POST(self):  # noqa: N802
        server = self.server
        server.calls += 1
        prompt = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["messages"][0]["content"]
        mode = server.mode
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
    server.calls, server.mode = 0, "consistent"
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
    settings = {"base_url": f"http://127.0.0.1:{stub.server_address[1]}/v1", "backoff_s": 0.01, "timeout_s": 5}
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
    cfg = judge_cfg(base_url="http://127.0.0.1:9/v1", retries=0, timeout_s=1)
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


def test_judge_command_writes_its_results_where_the_report_finds_them(stub, runs):
    import subprocess
    import sys

    from cdistill.eval.report import latest_judgement

    a, b = runs
    (a / "summary.json").write_text(json.dumps({"method": "cmdp", "threshold": 5}))
    stub.mode = "consistent"
    r = subprocess.run([sys.executable, "-m", "cdistill.cli", "judge", f"run_a={a}", f"run_b={b}",
                        f"judge.base_url=http://127.0.0.1:{stub.server_address[1]}/v1", "judge.backoff_s=0.01"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-1500:]
    assert "win 1.000" in r.stdout
    (out,) = (a / "judge").glob("*/judge.json")
    assert json.loads(out.read_text())["win_rate"] == 1.0
    assert len((out.parent / "judge_samples.jsonl").read_text().splitlines()) == 3
    assert latest_judgement(a) == "1.00/0.00/0.00 vs b"  # what the report's list of runs shows


def test_judge_command_against_an_unreachable_endpoint_stops_early_with_one_line(runs):
    import subprocess
    import sys

    a, b = runs
    r = subprocess.run([sys.executable, "-m", "cdistill.cli", "judge", f"run_a={a}", f"run_b={b}",
                        "judge.base_url=http://127.0.0.1:9/v1", "judge.retries=0", "judge.timeout_s=1"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("cdistill: error: every judgement failed (cannot reach "
                           "http://127.0.0.1:9/v1/chat/completions")
    (out,) = (a / "judge").glob("*/judge.json")  # what was tried is still recorded
    assert json.loads(out.read_text())["failed_rate"] == 1.0


def test_judging_stops_after_the_first_problems_all_fail(tmp_path):
    a = write_run(tmp_path / "a", [f"GOOD {i}" for i in range(6)])
    b = write_run(tmp_path / "b", [f"bad {i}" for i in range(6)])
    calls = []

    def down(prompt):
        calls.append(prompt)
        raise JudgeError("cannot reach the endpoint")

    summary, records = judge_runs(down, judge_cfg(), a, b)
    assert len(records) == FAIL_FAST < 6 and len(calls) == FAIL_FAST and summary["failed_rate"] == 1.0
