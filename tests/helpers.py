"""Tiny configurations for tests: the real code path at sizes that run in seconds on a CPU."""

from pathlib import Path

from hydra import compose, initialize_config_dir

CONF = str(Path(__file__).resolve().parent.parent / "conf")

TINY = [
    "task.n_train=400", "task.n_test=12",
    "model.embedded.tokenizer.vocab_size=200",
    "model.embedded.teacher.size.hidden=32", "model.embedded.teacher.size.intermediate=64",
    "model.embedded.teacher.size.layers=1", "model.embedded.teacher.size.heads=2",
    "model.embedded.teacher.steps=20", "model.embedded.teacher.batch_size=16", "model.embedded.teacher.warmup=2",
    "model.embedded.student.size.hidden=16", "model.embedded.student.size.intermediate=32",
    "model.embedded.student.size.layers=1", "model.embedded.student.size.heads=2",
    "model.embedded.student.steps=10", "model.embedded.student.batch_size=16", "model.embedded.student.warmup=2",
    "rollout.prompts_per_step=2", "rollout.samples_per_prompt=3", "rollout.max_new_tokens=10",
    "optim.steps=2", "optim.micro_batch=4", "scoring.micro_batch=4",
    "eval.n_problems=4", "eval.samples=2", "eval.batch_size=3",
    "logging.wandb.enabled=false", "logging.progress=false", "device=cpu",
]


def tiny_cfg(tmp_path: Path, *overrides: str, cache: Path | None = None):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("config", [*TINY, f"paths.cache={cache or tmp_path / 'cache'}", *overrides])
