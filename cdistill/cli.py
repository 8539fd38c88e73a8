"""``cdistill <command> [hydra overrides]``: train, eval and report from one entry point."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

CONF_DIR = os.environ.get("CDISTILL_CONF", str(Path(__file__).resolve().parent.parent / "conf"))
USAGE = """usage: cdistill <command> [overrides]

commands:
  train    train a student (Hydra app: cdistill train method=grpo constraint.threshold=3; -m for sweeps)
  eval     evaluate a trained student: cdistill eval run_dir=<run directory>
  report   table of every run under a sweep or runs directory: cdistill report <dir>
"""

log = logging.getLogger("cdistill")


class UserError(Exception):
    """A problem with the user's input: reported in one line, exit code 2."""


def fail(msg: str, debug: bool = False, exc: BaseException | None = None) -> None:
    if debug or os.environ.get("HYDRA_FULL_ERROR") == "1":
        if exc is not None:
            raise exc
    print(f"cdistill: error: {msg}", file=sys.stderr)
    sys.exit(2)


def guarded(fn):
    """Run ``fn``; known input errors become one line on stderr and exit code 2."""
    from cdistill.models import ModelError
    from cdistill.tasks.base import TaskError

    def wrapper(cfg: DictConfig):
        try:
            return fn(cfg)
        except (UserError, TaskError, ModelError, ValueError, FileNotFoundError, OSError) as e:
            fail(str(e).splitlines()[0] if str(e) else type(e).__name__, bool(cfg.get("debug", False)), e)

    return wrapper


@guarded
def _train(cfg: DictConfig):
    from hydra.core.hydra_config import HydraConfig

    from cdistill.evaluate import format_report
    from cdistill.train import train

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    summary = train(cfg, run_dir)
    print(f"\n[{summary['method']} d={summary['threshold']}] {run_dir}")
    print(format_report(summary))
    return summary["accuracy_sampled"]


@guarded
def _eval(cfg: DictConfig):
    from hydra.core.hydra_config import HydraConfig

    from cdistill.evaluate import evaluate, format_report, write_eval
    from cdistill.runtime import build_components, seed_everything

    run_dir = Path(cfg.run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"{run_dir} is not a training run directory (no config.yaml)")
    run_cfg = OmegaConf.load(run_dir / "config.yaml")
    for key, target in (("threshold", "constraint.threshold"), ("n_problems", "eval.n_problems"),
                        ("samples", "eval.samples"), ("device", "device")):
        if cfg[key] is not None:
            OmegaConf.update(run_cfg, target, cfg[key])
    checkpoint = cfg.checkpoint or str(run_dir / "student")
    if not Path(checkpoint).is_dir():
        raise UserError(f"no student checkpoint at {checkpoint}")
    seed_everything(cfg.seed)
    comp = build_components(run_cfg, student_path=checkpoint)
    report, records = evaluate(comp, run_cfg, with_samples=True)
    out = Path(HydraConfig.get().runtime.output_dir)
    write_eval(out, report, records)
    print(format_report(report))
    print(f"wrote {out / 'eval.json'} and {out / 'eval_samples.jsonl'}")


def _report(args: list[str]) -> None:
    from cdistill.report import report_main

    report_main(args)


def quiet_libraries() -> None:
    """Per-step progress bars and advice from transformers drown the run's own progress output."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def _hydra(fn, config_name: str):
    return hydra.main(config_path=CONF_DIR, config_name=config_name, version_base="1.3")(fn)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    cmd, rest = argv[0], argv[1:]
    commands = {"train": (_train, "config"), "eval": (_eval, "eval")}
    if cmd == "report":
        _report(rest)
        return
    if cmd not in commands:
        fail(f"unknown command {cmd!r}; expected one of train, eval, report")
    fn, config_name = commands[cmd]
    quiet_libraries()
    sys.argv = [f"cdistill {cmd}", *rest]
    _hydra(fn, config_name)()


if __name__ == "__main__":
    main()
