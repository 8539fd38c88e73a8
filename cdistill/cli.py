"""``cdistill <command> [hydra overrides]``: train, eval, judge and report from one entry point."""

from __future__ import annotations

import json
import os
import signal
import sys
import zlib
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf, open_dict

from cdistill.errors import UserError, fail, say_error

CONF_DIR = os.environ.get("CDISTILL_CONF", str(Path(__file__).resolve().parent.parent / "conf"))
USAGE = """usage: cdistill <command> [overrides]

commands:
  train    train a student (Hydra app: cdistill train method=grpo constraint.threshold=3; -m for sweeps)
  eval     evaluate a trained student: cdistill eval run_dir=<run directory>
  judge    pairwise LLM judge of two runs: cdistill judge run_a=<run dir> run_b=<run dir>
  report   table and plots of every run under a sweep or runs directory: cdistill report <dir>
  protocol tune every method on validation, select, train fresh seeds, read test once, report the declared
           verdicts: cdistill protocol [dir=<study>] [trials=K ...] [-- train overrides, e.g. +exp=flawed_teacher]
"""
EXISTED: dict[Path, bool] = {}  # before Hydra starts: whether each directory it may make for this command existed


def note_existing(cmd: str, overrides: list[str]) -> None:
    """Record, before Hydra makes this command's output directory, which of the directories it may make exist
    already: a refusal removes only what this command made."""
    given = {k: v.strip("'\"") for k, _, v in (o.partition("=") for o in overrides) if _}
    out = {"train": "outputs/runs/*", "eval": f"{given.get('run_dir', '')}/eval/*",
           "judge": f"{given.get('run_a', '')}/judge/*", "protocol": given.get("dir", "outputs/studies/*")}[cmd]
    out = given.get("hydra.run.dir", out)
    for p in [Path(out), *Path(out).parents]:
        if p.name != "*":  # a timestamped name: made by this command
            EXISTED.setdefault(p.absolute(), p.exists())


def discard_refused_output() -> None:
    """A refused command leaves nothing: Hydra made its output directory (``.hydra/``, ``<job>.log``) before any
    of this command's checks ran. It is removed, with the directories above it that Hydra made for it
    (``<run>/eval/``), when this command made it and it holds only Hydra's files; a directory that existed before
    is left as it is (Hydra has rewritten its ``.hydra/`` record)."""
    import logging
    import shutil

    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    if hc.mode != RunMode.RUN:  # a sweep's jobs share its directory; each job's refusal is its own line
        return
    out = Path(hc.runtime.output_dir).absolute()
    made = not EXISTED.get(out, out.parent not in EXISTED)  # unknown, and its parent unrecorded: not ours
    if not made or not out.is_dir() or not {p.name for p in out.iterdir()} <= {".hydra", f"{hc.job.name}.log"}:
        return
    # Hydra's log handler still points into it: closed first, or the next line logged in this process (a test
    # suite, a notebook) would fail on the file it can no longer open
    for logger in [logging.getLogger(), *map(logging.getLogger, list(logging.root.manager.loggerDict))]:
        for handler in list(logger.handlers):
            if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).is_relative_to(out):
                handler.close()
                logger.removeHandler(handler)
    shutil.rmtree(out)
    for d in out.parents:
        if EXISTED.get(d, True) or any(d.iterdir()):
            break
        d.rmdir()


def guarded(fn):
    """Run ``fn``; known input errors become one line on stderr and exit code 2, and leave nothing behind."""

    def wrapper(cfg: DictConfig):
        try:
            return checked(cfg)
        except SystemExit as e:
            if e.code == 2:
                discard_refused_output()
            raise

    def checked(cfg: DictConfig):
        # imported here: `cdistill --help` and `cdistill report` should not pay for transformers
        from cdistill.eval.judge import JudgeError
        from cdistill.models import ModelError
        from cdistill.models.served import ServerError
        from cdistill.preemption import Preempted, StopAtOnce
        from cdistill.runtime import ResourceError, out_of_space
        from cdistill.tasks.base import TaskError
        from cdistill.train import TrainingError

        debug = cfg.get("debug") is True  # debug=maybe is itself a bad value, reported in one line
        try:
            return fn(cfg)
        except OSError as e:
            if out_of_space(e):  # a log line, a cache file: not the input's fault, still one line
                fail(f"no space left on the device of {e.filename or Path.cwd()}; free some space or point the run "
                     "elsewhere", debug, e, code=1)
            fail(str(e).splitlines()[0] if str(e) else type(e).__name__, debug, e)
        except (UserError, TaskError, ModelError, JudgeError, ValueError) as e:
            fail(str(e).splitlines()[0] if str(e) else type(e).__name__, debug, e)
        except (TrainingError, ResourceError, ServerError) as e:  # not the input's fault: exit 1, still one line
            fail(str(e).splitlines()[0], debug, e, code=1)
        except Preempted as e:  # on a signal: exit 75 when the same command continues the run, else 128 + signal
            say_error(f"cdistill: {e}")
            if e.hand_over is not None:  # a submitit job: its handler requeues it and exits (on its rank 0)
                e.hand_over()
            sys.exit(e.exit_code)
        except StopAtOnce as e:  # the loop turns it into Preempted; this is one that came just outside the loop
            say_error(f"cdistill: stopped by {signal.Signals(e.signum).name} at once, outside a training step")
            sys.exit(128 + e.signum)

    return wrapper


def requeued(run_dir: Path, cfg) -> bool:
    """Whether this run continues one that stopped: the run directory says a signal stopped it (``preempted.json``:
    the same command again, or a job that submitit requeued; with ``overwrite=true`` only the very same command,
    another one starts over), or this is a Slurm job that was requeued (after a preemption, a time limit or a
    node failure: it may have been killed before it could write the marker)."""
    from cdistill.preemption import command_of, stopped_command

    stopped = stopped_command(run_dir)
    if stopped is not None and (not cfg.overwrite or stopped == command_of(cfg)):
        return True
    return os.environ.get("SLURM_RESTART_COUNT", "0").strip() not in ("", "0")


@guarded
def _train(cfg: DictConfig):
    from hydra.core.hydra_config import HydraConfig

    from cdistill.checkpoint import fingerprint
    from cdistill.config import validate
    from cdistill.eval.evaluate import format_report
    from cdistill.selection import FAILED, Rule, objective
    from cdistill.train import TrainingError, train

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    tuning = "optuna" in str(hydra_cfg.sweeper.get("_target_", ""))  # a trial of a tuning study (conf/tune/)
    if tuning and cfg.eval.get("split", "test") != "validation":
        raise UserError("a tuning sweep (hydra/sweeper=optuna) must be scored on the validation split, never on "
                        "test: set eval.split=validation (conf/tune/ does)")
    if requeued(run_dir, cfg) and not cfg.resume and not (run_dir / "summary.json").is_file():
        with open_dict(cfg):  # a run stopped by a signal, or a job put back in the queue, continues where it stopped
            cfg.resume = "auto"
    if tuning and cfg.resume == "auto" and not cfg.overwrite and failed_same_trial(run_dir, cfg):
        print(f"[{cfg.method.name}] {run_dir} failed before under this configuration: its score is {FAILED}")
        return FAILED
    if (run_dir / "summary.json").is_file() and not cfg.overwrite:
        done = finished_same_run(run_dir, cfg) if cfg.resume == "auto" else None
        if done is not None:  # a study that stopped continues: its finished trials give their result again
            validate(cfg)
            print(f"[{done['method']}] {run_dir} already finished under this configuration: its result is reused")
            return objective(done, Rule.of(cfg.selection))
        raise UserError(f"{run_dir} already holds a finished run; choose another directory or set overwrite=true")
    if (run_dir / "metrics.jsonl").is_file() and not cfg.overwrite and not cfg.resume:
        raise UserError(f"{run_dir} holds an unfinished run; resume=auto continues it, overwrite=true starts it over")
    try:
        summary = train(cfg, run_dir)
    except TrainingError as e:
        if not tuning:
            raise
        # one trial of a study whose settings cannot train (non-finite steps): the worst score, and the study goes on
        line = str(e).splitlines()[0]
        (run_dir / FAILED_TRIAL).write_text(json.dumps({"failed": line, "fingerprint": fingerprint(cfg)}))
        say_error(f"cdistill: trial failed: {line}; its score is {FAILED} ({run_dir / FAILED_TRIAL})")
        return FAILED
    if not summary:  # a secondary process of accelerate launch: the main one reports
        return None
    print(f"\n[{summary['method']} d={summary['threshold']}] {run_dir}")
    print(format_report(summary))
    # what a sweeper maximises (hydra/sweeper=optuna): the declared selection rule's score (cdistill/selection.py)
    return objective(summary, Rule.of(cfg.selection))


FAILED_TRIAL = "failed.json"  # a tuning trial whose training failed: its reason, and the configuration it ran


def failed_same_trial(run_dir: Path, cfg) -> bool:
    """Whether ``run_dir`` holds a trial that failed under ``cfg``: a resumed study scores it again without training."""
    from cdistill.checkpoint import fingerprint

    try:
        failed = json.loads((run_dir / FAILED_TRIAL).read_text())
    except (OSError, ValueError):
        return False
    return failed.get("fingerprint") == fingerprint(cfg)


def finished_same_run(run_dir: Path, cfg) -> dict | None:
    """The summary of the finished run in ``run_dir`` when it was trained under ``cfg`` (the checkpoint
    fingerprint: what the run computes, resources and logging aside), else None."""
    from cdistill.checkpoint import fingerprint

    try:
        saved = OmegaConf.load(run_dir / "config.yaml")
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    return summary if fingerprint(saved) == fingerprint(cfg) else None


@guarded
def _eval(cfg: DictConfig):
    from hydra.core.hydra_config import HydraConfig

    from cdistill.config import validate
    from cdistill.eval.evaluate import evaluate, format_report, write_eval
    from cdistill.models.loading import build_components
    from cdistill.runtime import seed_everything
    from cdistill.schema import check

    check(cfg, "eval")  # this command's own settings, then the run's config with them
    run_dir = Path(cfg.run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"{run_dir} is not a training run directory (no config.yaml)")
    run_cfg = OmegaConf.load(run_dir / "config.yaml")
    for key, target in (("threshold", "constraint.threshold"), ("n_problems", "eval.n_problems"),
                        ("samples", "eval.samples"), ("split", "eval.split"),
                        ("device", "device"), ("family_field", "task.family_field"),
                        ("teacher_url", "model.teacher.server.base_url")):
        if cfg[key] is not None:
            OmegaConf.update(run_cfg, target, cfg[key])
    validate(run_cfg, command="eval")  # the run's config with this command's overrides (n_problems, samples, device)
    checkpoint = Path(cfg.checkpoint or run_dir / "student")
    if (checkpoint / "student").is_dir():  # a checkpoints/step-N directory: the student it holds
        checkpoint = checkpoint / "student"
    if not checkpoint.is_dir():
        raise UserError(f"no student checkpoint at {checkpoint}")
    if not any((checkpoint / f).is_file() for f in ("config.json", "adapter_config.json")):
        raise UserError(f"checkpoint={cfg.checkpoint or checkpoint}: no student there (no config.json); give a run's "
                        "student/ directory or one of its checkpoints/step-N")
    checkpoint = str(checkpoint)
    seed_everything(cfg.seed)
    parts = build_components(run_cfg, student_path=checkpoint)
    report, records = evaluate(parts, run_cfg, with_samples=True)
    out = Path(HydraConfig.get().runtime.output_dir)
    write_eval(out, report, records)
    print(format_report(report))
    print(f"wrote {out / 'eval.json'} and {out / 'eval_samples.jsonl'}")


@guarded
def _judge(cfg: DictConfig):
    from hydra.core.hydra_config import HydraConfig
    from tqdm.auto import tqdm

    from cdistill.eval.judge import build_judge, judge_runs
    from cdistill.runtime import pick_device
    from cdistill.schema import check

    check(cfg, "judge")
    judge = build_judge(cfg.judge, pick_device(cfg.device))
    summary, records = judge_runs(judge, cfg.judge, Path(cfg.run_a), Path(cfg.run_b), cfg.n_problems,
                                  progress=lambda xs: tqdm(xs, desc="judging", mininterval=2.0))
    out = Path(HydraConfig.get().runtime.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "judge_samples.jsonl").open("w") as fh:
        for r in records:
            fh.write(json.dumps(r) + "\n")
    if summary["failed_rate"] == 1.0:
        # no judge.json: the report shows a run's newest one, which should stay its last real judgement
        raise UserError(f"every judgement failed ({records[0]['error']}); records in {out / 'judge_samples.jsonl'}")
    (out / "judge.json").write_text(json.dumps(summary, indent=2))
    print(f"run_a vs run_b on {summary['n_problems']} problems (both orders): win {summary['win_rate']:.3f}  "
          f"loss {summary['loss_rate']:.3f}  tie {summary['tie_rate']:.3f}  failed {summary['failed_rate']:.3f}")
    print(f"wrote {out / 'judge.json'}")


PROTOCOL_EXTRA: list[str] = []  # the train overrides after `--` of `cdistill protocol`


@guarded
def _protocol(cfg: DictConfig):
    from cdistill.protocol import ProtocolError, run
    from cdistill.schema import ConfigError, check

    try:
        check(cfg, "protocol")
    except ConfigError as e:
        if "is not a setting of cdistill protocol" in str(e):  # most likely a training run's override
            raise UserError(f"{e}; the overrides of the runs go after --: cdistill protocol [study settings] -- "
                            "[train overrides]") from None
        raise
    try:
        run(cfg, PROTOCOL_EXTRA)
    except ProtocolError as e:
        raise UserError(str(e)) from None
    except KeyboardInterrupt:  # between two runs (during one, the run is stopped and ProtocolError says so)
        fail(f"stopped; to continue: cdistill protocol dir={cfg.dir}" + (f" -- {' '.join(PROTOCOL_EXTRA)}"
                                                                         if PROTOCOL_EXTRA else ""), code=130)


def _report(args: list[str]) -> None:
    from cdistill.eval.report import report_main

    report_main(args)


def check_run_dir(overrides: list[str]) -> None:
    """Check an explicit ``hydra.run.dir=`` before Hydra starts: Hydra rewrites the directory's ``.hydra/``
    record before our code runs, which would already overwrite the finished run's recorded command, and it
    fails with a traceback on a directory it cannot create."""
    if any(o in ("-m", "--multirun") for o in overrides):
        return
    for o in overrides:
        if o.startswith("hydra.run.dir="):
            run_dir = Path(o.split("=", 1)[1])
            if (run_dir / "summary.json").is_file() and "overwrite=true" not in overrides:
                fail(f"{run_dir} already holds a finished run; choose another directory or set overwrite=true")
            existing = next(p for p in [run_dir, *run_dir.absolute().parents] if p.exists())
            if not existing.is_dir():
                fail(f"output directory {run_dir} cannot be created: {existing} is a file")
            if not os.access(existing, os.W_OK):
                fail(f"output directory {run_dir} is not writable")


GROUPS = ("method", "model", "task", "exp")
REQUIRED = {"eval": ("run_dir",), "judge": ("run_a", "run_b")}
PATHS = {"train": ("hydra.run.dir", "hydra.sweep.dir", "resume", "paths.cache"), "eval": ("run_dir", "checkpoint"),
         "judge": ("run_a", "run_b")}


def quote_paths(cmd: str, overrides: list[str]) -> list[str]:
    """A multirun job's directory is named by its overrides (``.../method.penalty=0.1,seed=0``): given back as a
    path (``run_dir=``, ``hydra.run.dir=``, ``resume=``) its ``=`` breaks Hydra's override grammar, so such a
    value is quoted for it."""
    out = []
    for o in overrides:
        key, sep, value = o.partition("=")
        if sep and key in PATHS.get(cmd, ()) and "=" in value and value[:1] not in ("'", '"'):
            o = f"{key}='{value}'" if "'" not in value else f'{key}="{value}"'
        out.append(o)
    return out


def check_required(cmd: str, overrides: list[str]) -> None:
    """The run directories of ``eval`` and ``judge``, before Hydra starts: it names its output directory after
    them and creates it (a typo would leave ``<typo>/eval/<time>/`` behind), and fails with a traceback when one
    is missing."""
    given = dict(o.split("=", 1) for o in overrides if "=" in o)
    for key in REQUIRED.get(cmd, ()):
        if key not in given:
            fail(f"{key} is required: cdistill {cmd} {' '.join(f'{k}=<run directory>' for k in REQUIRED[cmd])}")
    for key in REQUIRED.get(cmd, ()):
        value = given[key].strip("'\"")
        if cmd == "eval" and (not value or not (Path(value) / "config.yaml").is_file()):
            fail(f"{key}={value or repr(value)} is not a training run directory (no config.yaml there)")
        if not value or not Path(value).is_dir():  # the judge reads each run's eval_samples.jsonl (and says so)
            fail(f"{key}={value or repr(value)}: no such run directory")


def check_groups(overrides: list[str]) -> None:
    """``method=bogus``: one line naming the choices, instead of Hydra's multi-line composition error."""
    for o in overrides:
        key, sep, value = o.lstrip("+~").partition("=")
        if not sep or key not in GROUPS or "(" in value:  # sweep functions (choice(...), range(...)) pass
            continue
        available = sorted(p.stem for p in (Path(CONF_DIR) / key).glob("*.yaml"))
        for v in value.split(","):
            if v not in available:
                fail(f"unknown {key} {v!r}; available: {', '.join(available)}")


def check_keys(cmd: str, overrides: list[str]) -> None:
    """A misspelt key without ``+`` (``optim.stepz=20``): Hydra refuses it in several lines with exit code 1 and
    suggests ``+optim.stepz=``, which is refused in turn; here it is one line naming the nearest real key. Config
    groups (``method=``, ``hydra/launcher=``), Hydra's own keys and ``+``/``~`` overrides are left to Hydra and
    the schema."""
    from cdistill.schema import TABLES, entry, settings, unknown_key

    known = settings(cmd)
    groups = {p.name for p in Path(CONF_DIR).iterdir() if p.is_dir()}
    for o in overrides:
        key, sep, _ = o.partition("=")
        if not sep or o.startswith(("-", "+", "~")) or "/" in key or "@" in key or key in groups \
                or key.split(".")[0] == "hydra" or key in known or entry(TABLES[cmd], key) is not None:
            continue
        fail(unknown_key(key, cmd))


COMMAND_USAGE = {
    "train": "cdistill train [key=value ...]  (-m: one run per combination of comma-separated values)",
    "eval": "cdistill eval run_dir=<training run> [key=value ...]",
    "judge": "cdistill judge run_a=<run> run_b=<run> [key=value ...]",
    "protocol": "cdistill protocol [key=value ...] [-- overrides of every run it trains]",
}


def command_help(cmd: str, config_name: str, overrides: list[str]) -> None:
    """``cdistill <cmd> --help``: the command's own settings, one line each, with their values under
    ``overrides`` (``cdistill train +exp=gsm8k --help`` shows gsm8k's) and what each may hold."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    from cdistill.schema import TABLES

    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose(config_name, [o for o in overrides if not o.startswith("-")])
    except HydraException as e:
        fail(str(e).splitlines()[0])
    table = TABLES[cmd]
    shown = {}
    for key in table:
        parent_key, _, leaf = key.rpartition(".")
        parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
        # another choice's setting (method=lagrangian's lr); `in` is false for a required value too
        if not OmegaConf.is_dict(parent) or leaf not in parent.keys():
            continue
        if OmegaConf.is_missing(parent, leaf):
            shown[key] = "(required)"
            continue
        value = parent[leaf]
        text = json.dumps(OmegaConf.to_container(value) if OmegaConf.is_config(value) else value)
        shown[key] = text if len(text) <= 48 else text[:45] + "..."  # a prompt template would widen every line
    width = max(len(f"{k}={v}") for k, v in shown.items())
    lines = [f"usage: {COMMAND_USAGE[cmd]}", "", "settings (value now, then what it may hold):"]
    lines += [f"  {f'{k}={v}':<{width}}  {table[k].describe()}" for k, v in shown.items()]
    if cmd == "train":
        groups = [f"{g}=" + "|".join(sorted(p.stem for p in (Path(CONF_DIR) / g).glob("*.yaml")))
                  for g in ("method", "model", "task")]
        exps = "|".join(sorted(p.stem for p in (Path(CONF_DIR) / "exp").glob("*.yaml")))
        lines += ["", f"config groups: {'  '.join(groups)}  +exp={exps}",
                  "(another method's or model's settings are listed once it is chosen: cdistill train "
                  "method=lagrangian --help)"]
    lines += ["", f"the whole composed config: cdistill {cmd} [overrides] --cfg job;  Hydra's own options: "
              f"cdistill {cmd} --hydra-help"]
    print("\n".join(lines))


def quiet_libraries() -> None:
    """Per-step progress bars and advice from transformers drown the run's own progress output."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def job_dir(overrides: str, method: str, num: int) -> str:
    """A multirun job's directory name: its swept overrides (``hydra.job.override_dirname``, from which
    ``name_swept_only`` leaves the fixed ones out), else the method and job number. Path separators become ``_``
    so that a swept file path stays one directory; a long name is cut and keeps a hash of the whole, so that
    it stays unique."""
    name = overrides.replace(os.sep, "_").replace("\\", "_").lstrip(".") or f"{method}_job{num}"
    if len(name) > 150:
        name = f"{name[:140]}~{zlib.crc32(overrides.encode()):08x}"
    return name


def name_swept_only(overrides: list[str]) -> list[str]:
    """For a multirun, tell Hydra to name job directories by the swept keys only (``seed=0``, not every
    fixed override repeated in every name), unless the user chose the excluded keys."""
    if not any(o in ("-m", "--multirun") for o in overrides) or any(
            o.startswith("hydra.job.config.override_dirname") for o in overrides):
        return overrides
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides([o for o in overrides if not o.startswith("-")])
    except Exception:  # Hydra reports a malformed override itself, in its own words
        return overrides
    fixed = sorted({o.key_or_group for o in parsed if not o.is_sweep_override() and not o.key_or_group.startswith(
        "hydra")})
    return [*overrides, f"hydra.job.config.override_dirname.exclude_keys=[{','.join(fixed)}]"] if fixed else overrides


def _hydra(fn, config_name: str):
    if not OmegaConf.has_resolver("cdistill.job_dir"):
        OmegaConf.register_new_resolver("cdistill.job_dir", job_dir)
    return hydra.main(config_path=CONF_DIR, config_name=config_name, version_base="1.3")(fn)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    cmd, rest = argv[0], argv[1:]
    commands = {"train": (_train, "config"), "eval": (_eval, "eval"), "judge": (_judge, "judge_run"),
                "protocol": (_protocol, "protocol")}
    if cmd == "report":
        _report(rest)
        return
    if cmd not in commands:
        fail(f"unknown command {cmd!r}; expected one of train, eval, judge, report, protocol")
    if cmd == "protocol" and "--" in rest:  # the study's own settings, then the overrides of every run it trains
        cut = rest.index("--")
        PROTOCOL_EXTRA[:] = rest[cut + 1:]
        rest = rest[:cut]
    fn, config_name = commands[cmd]
    if "--help" in rest or "-h" in rest:  # Hydra's would describe its own app, with every group of conf/
        command_help(cmd, config_name, rest)
        return
    rest = quote_paths(cmd, rest)
    check_keys(cmd, rest)
    check_required(cmd, rest)
    note_existing(cmd, rest)
    if cmd == "train":
        check_groups(rest)
        check_run_dir(rest)
        rest = name_swept_only(rest)
    quiet_libraries()
    sys.argv = [f"cdistill {cmd}", *rest]
    _hydra(fn, config_name)()


if __name__ == "__main__":
    main()
