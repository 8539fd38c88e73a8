"""Bad input: one line on stderr starting ``cdistill: error:``, exit code 2, no traceback, nothing earlier lost.

Each case runs the real command line. Messages are asserted verbatim where the user sees a fixed text.
"""

import json
import subprocess
import sys

import pytest
from helpers import TINY
from omegaconf import OmegaConf

from cdistill.models.embedded import build_tokenizer, tiny_llama
from cdistill.rollout import engines


def cdistill(*args):
    return subprocess.run([sys.executable, "-m", "cdistill.cli", *args], capture_output=True, text=True, timeout=600)


def one_line_error(r) -> str:
    assert r.returncode == 2, r.stderr[-1500:]
    assert "Traceback" not in r.stderr, r.stderr[-1500:]
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.startswith("cdistill: error:")]
    assert len(lines) == 1, r.stderr[-1500:]
    return lines[0]


def train(tmp_path, *overrides):
    return cdistill("train", *TINY, f"paths.cache={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}",
                    *overrides)


@pytest.mark.parametrize(("override", "message"), [
    ("method=bogus", "cdistill: error: unknown method 'bogus'; available: cmdp, gkd, grpo, lagrangian, opd, saute, "
                     "seqkd, sft, soft_penalty, weakest_link"),
    ("method=cmdp,bogus", "cdistill: error: unknown method 'bogus'; available:"),
    ("task=nope", "cdistill: error: unknown task 'nope'; available: arith, gsm8k, math500"),
    ("constraint.cost=bogus", "cdistill: error: unknown constraint.cost 'bogus'; expected one of logratio, token_kl, "
                              "teacher_nll"),
    ("constraint.threshold=-1", "cdistill: error: constraint.threshold must be positive, got -1"),
    ("constraint.threshold=abc", "cdistill: error: constraint.threshold must be a number, got 'abc'"),
    ("rollout.max_new_tokens=0", "cdistill: error: rollout.max_new_tokens must be a whole number of at least 1, got 0"),
    ("model.teacher.quantization=3bit", "cdistill: error: unknown model.teacher.quantization '3bit'; expected one "
                                        "of 8bit, 4bit"),
    ("rollout.backend=sglang", "cdistill: error: unknown rollout.backend 'sglang'; expected one of hf, vllm"),
    ("rollout.importance_correction=yes", "cdistill: error: unknown rollout.importance_correction 'yes'; expected "
                                          "one of none, token, sequence"),
    ("resume=/nonexistent/ckpt", "cdistill: error: resume=/nonexistent/ckpt: no checkpoint there (expected a "
                                 "checkpoints/step-* directory with state.json)"),
    # values that used to train silently or crash later (issue 16)
    ("constraint.threshold=nan", "cdistill: error: constraint.threshold must be a finite number, got nan"),
    ("rollout.samples_per_prompt=1", "cdistill: error: rollout.samples_per_prompt=1 with cmdp: each completion is "
                                     "its group's own baseline, so its task reward cancels out of every advantage "
                                     "and is never learned from; use at least 2 (or optim.adv_baseline=none)"),
    ("rollout.top_p=1.5", "cdistill: error: rollout.top_p must be in (0, 1], got 1.5"),
    ("rollout.top_p=0", "cdistill: error: rollout.top_p must be in (0, 1], got 0"),
    ("eval.n_problems=0", "cdistill: error: eval.n_problems must be a whole number of at least 1, got 0"),
    ("seed=1.5", "cdistill: error: seed must be a whole number >= 0 and <= 2147483647, got 1.5"),
    ("device=tpu", "cdistill: error: device must be auto, cpu or cuda[:N], got 'tpu'"),
    ("model.student.name_or_path=/nonexistent/model", "cdistill: error: model.student.name_or_path: no such model "
                                                      "directory /nonexistent/model"),
])
def test_bad_values_are_one_line_before_anything_is_built(tmp_path, override, message):
    line = one_line_error(train(tmp_path, override))
    assert line.startswith(message), line
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize(("overrides", "message"), [
    (("method=soft_penalty", "method.penalty=-1"), "cdistill: error: method.penalty must be >= 0, got -1"),
    (("method=lagrangian", "method.lr=-0.1"), "cdistill: error: method.lr must be >= 0, got -0.1"),
    (("method=cmdp", "method.penalty=nan"), "cdistill: error: method.penalty must be a finite number, got nan"),
    (("method=grpo", "rollout.samples_per_prompt=1"), "cdistill: error: rollout.samples_per_prompt=1 with grpo"),
])
def test_a_method_refuses_options_that_turn_its_objective_around(tmp_path, overrides, message):
    line = one_line_error(train(tmp_path, *overrides))
    assert line.startswith(message), line
    assert not (tmp_path / "cache").exists()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="CUDA is available here")
def test_device_cuda_without_cuda_is_one_line(tmp_path):
    line = one_line_error(train(tmp_path, "device=cuda"))
    assert line == ("cdistill: error: device=cuda but no CUDA device is available here; use device=auto or "
                    "device=cpu")


def test_weakest_link_on_another_cost_is_refused_in_one_line(tmp_path):
    line = one_line_error(train(tmp_path, "method=weakest_link", "constraint.cost=logratio"))
    assert line == ("cdistill: error: method weakest_link needs constraint.cost=teacher_nll and "
                    "constraint.kind=prefix_mean, got logratio / prefix_mean")


@pytest.mark.skipif(engines.vllm_available(), reason="vLLM is installed here")
def test_the_vllm_backend_without_vllm_installed_is_one_line_naming_the_extra(tmp_path):
    line = one_line_error(train(tmp_path, "rollout.backend=vllm"))
    assert line == ("cdistill: error: rollout.backend=vllm needs vLLM, which is not installed: "
                    "pip install 'cdistill[vllm]' (Linux, CUDA GPU)")
    assert not (tmp_path / "cache").exists()


def test_saute_cannot_sample_with_vllm(tmp_path):
    line = one_line_error(train(tmp_path, "method=saute", "rollout.backend=vllm"))
    assert line == ("cdistill: error: method saute samples token by token with the teacher tracking the budget; "
                    "vLLM cannot: use rollout.backend=hf")


def dataset_run(tmp_path, train_file, test_file):
    return train(tmp_path, "task=gsm8k", f"task.train_source={train_file}", f"task.test_source={test_file}",
                 "task.n_validation=0")


GOOD = {"question": "What is 2 + 3?", "answer": "2 + 3 = 5\n#### 5"}


@pytest.mark.parametrize(("content", "message"), [
    (None, "dataset file not found: {path}"),
    ("", "dataset file is empty: {path}"),
    (json.dumps(GOOD) + "\n{oops\n", "{path}:2: malformed JSON line (Expecting property name enclosed in double "
                                     "quotes)"),
    (json.dumps({"q": "x", "a": "#### 1"}) + "\n", "row has no field(s) ['question', 'answer']; it has ['a', 'q']"),
    (b"\xff\xfe\x00binary", "{path}:1: not UTF-8 text; is it really a JSONL file?"),
])
def test_bad_dataset_files_are_one_line(tmp_path, content, message):
    path = tmp_path / "train.jsonl"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    good = tmp_path / "test.jsonl"
    good.write_text(json.dumps(GOOD) + "\n")
    line = one_line_error(dataset_run(tmp_path, path, good))
    assert message.format(path=path) in line, line


def test_student_with_another_tokenizer_and_a_full_distribution_cost_is_refused(tmp_path):
    # another tokenizer alone is a teacher with another tokenizer (tests/test_cross_tokenizer.py); a cost that compares
    # the two distributions over one vocabulary is not
    tok = build_tokenizer(["Question: 1 + 1\nAnswer:\n2"] * 10, 300)  # merges: a vocabulary of its own
    model = tiny_llama(tok, OmegaConf.create({"hidden": 8, "intermediate": 16, "layers": 1, "heads": 2,
                                              "max_positions": 64}), 0)
    other = tmp_path / "other"
    model.save_pretrained(other)
    tok.save_pretrained(other)
    line = one_line_error(train(tmp_path, f"model.student.name_or_path={other}", "constraint.cost=token_kl"))
    assert line == ("cdistill: error: constraint.cost=token_kl compares the two distributions over one vocabulary, "
                    "and the teacher's tokenizer differs from the student's: use constraint.cost=logratio or "
                    "teacher_nll, or a teacher that shares the student's tokenizer")


def test_output_directory_that_cannot_be_created_is_one_line(tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("not a directory")
    r = cdistill("train", *TINY, f"hydra.run.dir={blocker / 'run'}")
    want = f"cdistill: error: output directory {blocker / 'run'} cannot be created: {blocker} is a file"
    assert one_line_error(r) == want


def test_a_finished_run_is_refused_and_left_untouched_unless_overwrite(tmp_path):
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / "summary.json").write_text('{"kept": true}')
    (run / ".hydra" / "overrides.yaml").write_text("- the original command\n")
    line = one_line_error(train(tmp_path))
    assert line == (f"cdistill: error: {run} already holds a finished run; choose another directory or set "
                    "overwrite=true")
    assert (run / "summary.json").read_text() == '{"kept": true}'
    assert (run / ".hydra" / "overrides.yaml").read_text() == "- the original command\n"


def test_an_unfinished_run_is_refused_without_resume_or_overwrite(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    line = one_line_error(train(tmp_path))
    assert line == (f"cdistill: error: {run} holds an unfinished run; resume=auto continues it, overwrite=true "
                    "starts it over")
    assert (run / "metrics.jsonl").read_text() == '{"step": 1}\n'
