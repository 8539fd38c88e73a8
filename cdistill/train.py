"""The training loop, one page from set-up to summary: ``train`` builds the run, starts or resumes it, and
runs ``train_step`` (rollout → score → method → update → record) until the last step, evaluating and
checkpointing on the way. It holds no mathematics of its own: every number it computes comes from
``cdistill.objectives`` through a method (``cdistill.methods``)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import torch
from omegaconf import OmegaConf
from tqdm.auto import tqdm

from cdistill import checkpoint
from cdistill.config import validate, validate_launch
from cdistill.eval.evaluate import evaluate, format_report, write_eval
from cdistill.eval.metrics import batch_summary
from cdistill.logger import MetricsLogger
from cdistill.methods import Method, build_method
from cdistill.models.budget_input import attach, has_budget_input
from cdistill.models.forward import CompletionForward, Sequences, output_weight, prompt_groups
from cdistill.models.loading import Components, build_components, resolve_model_path, save_student
from cdistill.models.parallel import Dist, Sharded, StudentForward, write_rank_state
from cdistill.objectives import MicroBatch, Scored, clipped_policy_loss, truncated_importance_weights
from cdistill.optim import build_optimizer, build_scheduler
from cdistill.preemption import (
    GRACE_KEY,
    MARKER,
    Preempted,
    Preemption,
    StopAtOnce,
    StoppedAtOnce,
    checkpoint_step,
    command_of,
    mark,
)
from cdistill.rollout.engines import EngineSampler, build_sampler
from cdistill.rollout.sampling import Rollout, generation_config
from cdistill.rollout.source import Source
from cdistill.rollout.sources import PromptStream, TeacherSolutions, draw_rollout
from cdistill.runtime import (
    absolute,
    autocast,
    disk_space_hint,
    out_of_memory_hint,
    parameter_bytes,
    pick_device,
    seed_everything,
)
from cdistill.scoring import score_rollout, scoring_spec
from cdistill.teachers import other_constraints, teacher_config

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Training cannot go on (for example, every step's gradients are non-finite)."""


@dataclass
class Run:
    """What a run holds fixed while it trains, built once by ``set_up``."""

    cfg: object
    run_dir: Path
    dist: Dist
    parts: Components  # task, tokenizer, student (as the launch holds it), teacher, vocabulary, device
    method: Method
    student_forward: StudentForward  # every differentiated student forward goes through it
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    generation: object  # the rollout's transformers GenerationConfig
    stream: PromptStream
    solutions: TeacherSolutions  # the teacher's cached solutions (seqkd)
    sampler: EngineSampler | None  # another engine's rollouts (vLLM), or None for generate()
    logger: MetricsLogger | None  # the main process's
    resume: tuple[Path, dict, dict] | None  # (checkpoint, its trainer state, its state.json)

    @property
    def evaluates(self) -> bool:
        """The main process evaluates alone, unless the student is sharded: then every rank takes part."""
        return self.dist.is_main or self.dist.sharded


@dataclass
class LoopState:
    """What changes from step to step (and a checkpoint saves)."""

    step: int = 0  # the last step done
    start_reports: dict = field(default_factory=dict)  # evaluations of the student and teacher before training
    bad_steps: int = 0  # steps whose update was skipped (non-finite loss or gradient)
    bad_run: int = 0  # of those, how many in a row up to now
    last_checkpoint: Path | None = None


def train(cfg, run_dir: Path) -> dict:
    # A cluster's stop signal (cdistill.preemption) is recorded from the start: one during set-up (minutes of
    # model loading on real models) stops the run before its first step, with nothing new to save; one during a
    # step stops it after that step, with a checkpoint of it; one during the final save and evaluation is let
    # pass, so that the finished run ends as finished instead of losing that work. None of them is waited for
    # longer than the grace period, and a second one stops the run at once.
    with Preemption(OmegaConf.select(cfg, GRACE_KEY, default=None)) as preemption:
        doing, done = "set-up", 0  # what a stop at once leaves unfinished, and how many steps were done before it
        try:
            run = set_up(cfg, run_dir)
            signum = preemption.requested(run.dist)
            if signum is not None:  # before the start-of-run evaluations, which take minutes on real models too
                path, saved = (run.resume[0], run.resume[2]) if run.resume else (None, {"step": 0})
                stop(run, LoopState(saved["step"], last_checkpoint=path), preemption, signum, in_set_up=True)
            state = start_or_resume(run)
            signum = preemption.requested(run.dist)
            if signum is not None:
                stop(run, state, preemption, signum, in_set_up=True)
            steps, started = cfg.optim.steps, time.time()
            bar = tqdm(range(state.step + 1, steps + 1), desc=run.method.name, disable=not cfg.logging.progress,
                       mininterval=1.0, initial=state.step, total=steps)
            for step in bar:
                doing, done = f"step {step}", step - 1
                run_step(run, state, step, bar)
                signum = preemption.requested(run.dist)
                if signum is not None:  # the step is done: save it and stop
                    if (state.last_checkpoint is None
                            or state.last_checkpoint.name != f"{checkpoint.PREFIX}{step:06d}"):
                        save_checkpoint(run, state, step)
                    stop(run, state, preemption, signum)
            doing, done = "the final save and evaluation", steps
            summary = finish(run, state, train_seconds=time.time() - started)
        except StopAtOnce as halt:
            stop_at_once(cfg, run_dir, preemption, halt, doing, done)
    if preemption.signum is not None:  # it came after the last step's check
        log.warning("%s came while the run was finishing: it finished first", signal.Signals(preemption.signum).name)
    return summary


def stop(run: Run, state: LoopState, preemption: Preemption, signum: int, in_set_up: bool = False) -> NoReturn:
    """End the run on a signal, its last step saved: leave the marker that lets the same run directory continue
    by itself, and raise ``Preempted`` (``cdistill.cli`` then exits 75, or lets submitit requeue the job)."""
    if run.dist.is_main:
        mark(run.run_dir, signum, state.step, state.last_checkpoint, command_of(run.cfg))
    # no rank exits before the marker is written: torchrun stops (SIGTERM, then SIGKILL) the others once one exits
    run.dist.barrier()
    raise Preempted(signum, state.step, state.last_checkpoint, run.run_dir, in_set_up=in_set_up,
                    hand_over=preemption.hand_over(signum))


def stop_at_once(cfg, run_dir: Path, preemption: Preemption, halt: StopAtOnce, doing: str, done: int) -> NoReturn:
    """End the run in the middle of ``doing``, with no new checkpoint (the state in the middle of a step is not
    one to save) and no barrier (the other ranks may be in a collective this rank left): the newest checkpoint on
    disk is what ``resume=auto`` continues from, so the marker names it, from whichever rank stops first.

    The checkpoint is read from the directory, not from the loop's state: a checkpoint interrupted after it was
    sealed (while older ones were pruned) exists although the loop never learnt of it."""
    newest = checkpoint.complete(run_dir)
    path = newest[-1] if newest else None
    continues = path is not None or done == 0
    if continues:
        mark(run_dir, halt.signum, checkpoint_step(path) if path else 0, path, command_of(cfg))
    raise StoppedAtOnce(halt, doing, done, path, run_dir,
                        hand_over=preemption.hand_over(halt.first) if continues else None)


def run_step(run: Run, state: LoopState, step: int, bar) -> None:
    """One step and what follows it: the record logged, the guard against bad steps, periodic evaluation and
    checkpoint."""
    cfg, steps = run.cfg, run.cfg.optim.steps
    record = train_step(run, state, step)
    if run.logger is not None:
        run.logger.log(record)
    if "reward" in record:  # steps on the student's own samples
        bar.set_postfix(reward=f"{record['reward']:.2f}", div=f"{record['divergence_mean']:.2f}",
                        sat=f"{record['satisfaction_rate']:.2f}", refresh=False)
    if state.bad_run >= cfg.guards.max_bad_steps:
        where = f"; the last good checkpoint is {state.last_checkpoint}" if state.last_checkpoint else ""
        raise TrainingError(f"stopped at step {step}: {state.bad_run} steps in a row had a non-finite loss or "
                            f"gradient (lower optim.lr, check the data){where}")
    if due(cfg.eval.every, step, steps) and run.evaluates:
        evaluate_and_log(run, step)
    if due(cfg.checkpoint.every, step, steps) and not state.bad_run:
        save_checkpoint(run, state, step)


def train_step(run: Run, state: LoopState, step: int) -> dict:
    """One step: draw a batch, score it, let the method turn it into advantages, update, and say what
    happened (averaged over every process)."""
    cfg, parts, method = run.cfg, run.parts, run.method
    t0 = time.time()
    served = getattr(parts.teacher, "served", False)
    if served:  # what it counts from here on is this step's scoring (evaluations score too)
        parts.teacher.take_stats()
    source = method.source(step)
    # the same number of completions per step whatever the source: G samples of each prompt, or one given
    # completion for each of G times as many prompts
    per_prompt = cfg.rollout.samples_per_prompt if source.sampled else 1
    problems = run.stream.next(cfg.rollout.prompts_per_step * cfg.rollout.samples_per_prompt // per_prompt)
    with autocast(cfg, parts.device):
        rollout = draw_rollout(source, parts, cfg, problems, per_prompt, run.generation, run.solutions, run.sampler)
        t1 = time.time()
        student_pass = shared_student_pass(run, rollout)
        per_completion = [p for p in problems for _ in range(per_prompt)]
        scored = score_rollout(rollout, per_completion, parts, cfg, keep_teacher_hidden=method.needs_teacher_hidden,
                               student_pass=student_pass)
        t2 = time.time()
        with out_of_memory_hint("the student update", "lower optim.micro_batch (gradients are accumulated)"):
            upd = update(run, scored, rollout.seq, student_pass)
        t3 = time.time()
    if run.sampler is not None:
        run.sampler.weights_changed()
    state.step = step
    state.bad_run = state.bad_run + 1 if upd["skipped_updates"] else 0
    state.bad_steps += bool(upd["skipped_updates"])
    batch = batch_summary(scored)
    if source not in (Source.STUDENT, Source.BUDGET):
        # teacher or reference completions (sft, seqkd, off-policy gkd): their reward and satisfaction are not the
        # student's, so they are logged under another name and the curves of the student's metrics skip the step
        batch = {f"offpolicy/{k}": v for k, v in batch.items()}
    record = {"step": step, **batch, **upd, **method.after_step(scored), "bad_steps": state.bad_steps,
              **(parts.teacher.take_stats() if served else {}),
              "lr": run.scheduler.get_last_lr()[0], "time_generate": t1 - t0, "time_score": t2 - t1,
              "time_update": t3 - t2, "time_step": t3 - t0}
    tokens = float(scored.mask.sum())  # per-token metrics average over every rank's tokens
    return run.dist.weighted(record, {k: tokens for k in record if k.endswith(("sampled_kl_per_token", "entropy"))})


def shared_student_pass(run: Run, rollout: Rollout) -> CompletionForward | None:
    """The student's forward on the whole batch, with its graph, when the batch is one micro-batch: scoring
    reads it (detached) and the first update differentiates it, so the student runs once instead of twice."""
    cfg, n = run.cfg, rollout.seq.input_ids.shape[0]
    if not (cfg.scoring.reuse_student_pass and n <= cfg.optim.micro_batch):
        return None
    spec = scoring_spec(cfg, run.parts.vocab, prompt_groups(rollout.group_size, n, cfg.scoring.share_prompt))
    with out_of_memory_hint("the student forward", "lower optim.micro_batch or set scoring.reuse_student_pass=false"):
        return run.student_forward(rollout.seq.for_autograd(), spec)


def update(run: Run, scored: Scored, seq: Sequences, student_pass: CompletionForward | None = None) -> dict:
    """``optim.inner_epochs`` optimiser steps on one batch, gradients accumulated over micro-batches of
    completions. The first epoch differentiates ``student_pass`` when there is one.

    An optimiser step whose loss or gradient norm is not finite is skipped (gradients dropped, weights
    untouched) and counted in ``skipped_updates``: one bad batch must not poison the weights.
    """
    cfg, o = run.cfg, run.cfg.optim
    advantages = run.method.advantages(scored)
    importance = None  # samples drawn by another engine (vLLM) are re-weighted towards the trainer's policy
    if scored.sampler_logp is not None:
        importance = truncated_importance_weights(scored.old_logp, scored.sampler_logp, scored.mask,
                                                  cfg.rollout.importance_cap, cfg.rollout.importance_correction)
    denom = run.dist.token_denominator(scored.mask)
    spec = scoring_spec(cfg, run.parts.vocab, prompt_groups(scored.group_size, o.micro_batch, cfg.scoring.share_prompt))
    n = advantages.shape[0]
    zero = torch.zeros((), device=advantages.device)
    loss_sum, clip_sum, norm_sum, skipped = zero.clone(), zero.clone(), zero.clone(), 0
    for epoch in range(o.inner_epochs):
        run.optimizer.zero_grad(set_to_none=True)
        epoch_loss = zero.clone()
        for start in range(0, n, o.micro_batch):
            rows = torch.arange(start, min(n, start + o.micro_batch), device=advantages.device)
            with run.student_forward.accumulating(last=start + o.micro_batch >= n):
                forward = student_pass if student_pass is not None and epoch == 0 else \
                    run.student_forward(seq.select(rows), spec)
                loss, clip_frac = micro_batch_loss(run, scored, rows=rows, forward=forward, advantages=advantages,
                                                   importance=importance, denom=denom)
                loss.backward()
            epoch_loss += loss.detach()
            clip_sum += clip_frac * len(rows) / n
        grad_norm, applied = run.dist.step(run.parts.student.parameters(), run.optimizer, o.grad_clip,
                                           torch.isfinite(epoch_loss))
        skipped += not applied
        run.scheduler.step()
        loss_sum += epoch_loss
        norm_sum += grad_norm.to(zero.device)
    epochs = o.inner_epochs
    return {"loss": float(loss_sum) / epochs, "clip_frac": float(clip_sum) / epochs,
            "grad_norm": float(norm_sum) / epochs, "skipped_updates": skipped}


def micro_batch_loss(run: Run, scored: Scored, *, rows: torch.Tensor, forward: CompletionForward,
                     advantages: torch.Tensor, importance: torch.Tensor | None, denom: torch.Tensor):
    """(loss, clip fraction) of the micro-batch ``rows``: PPO's clipped surrogate on the method's advantages
    (weighted by ``importance`` when given), plus the method's own differentiable term. ``denom`` is the
    whole batch's token count, so that accumulated gradients equal the full-batch ones."""
    o, student, teacher = run.cfg.optim, run.parts.student, run.parts.teacher
    loss, stats = clipped_policy_loss(forward.logp, scored.old_logp[rows], advantages[rows], scored.mask[rows],
                                      o.clip_low, o.clip_high, denom, None if importance is None else importance[rows])
    batch = MicroBatch(rows, forward.logp, forward.hidden, scored.mask[rows], scored.teacher_logp[rows],
                       None if scored.teacher_hidden is None else scored.teacher_hidden[rows],
                       output_weight(student), output_weight(teacher), scoring_spec(run.cfg, run.parts.vocab),
                       None if scored.teacher_topk is None else scored.teacher_topk.select(rows),
                       tuple(o.teacher_logp[rows] for o in scored.others))
    extra = run.method.extra_loss(scored, batch, denom)
    return (loss if extra is None else loss + extra), stats["clip_frac"]


def due(every: int, step: int, steps: int) -> bool:
    """Whether a periodic action (evaluation, checkpoint) falls on ``step``; the last step has its own."""
    return bool(every) and step % every == 0 and step < steps


def set_up(cfg, run_dir: Path) -> Run:
    """Check the config, then build everything the run holds: models, method, optimiser, sampler, logger."""
    validate(cfg)
    dist = Dist(pick_device(cfg.device))
    resume_from = checkpoint.find(cfg.get("resume"), run_dir)
    # read (and checked against the config) before minutes of model building
    resume = (resume_from, *checkpoint.load(resume_from, cfg, dist.rank, dist.world)) if resume_from else None
    dist.barrier()  # every rank has chosen (and read) its checkpoint before damaged newer ones are moved aside
    if resume_from is not None and dist.is_main:
        checkpoint.set_aside_newer(run_dir, resume_from)
    method = build_method(cfg.method, cfg.constraint, cfg.optim, reduce_mean=dist.mean, seed=cfg.seed,
                          others=other_constraints(cfg))
    validate_launch(cfg, method, dist.sharded)
    seed_everything(cfg.seed)
    with dist.main_first():
        parts = build_components(cfg, student_path=str(resume_from / "student") if resume_from else None,
                                 device=str(dist.accelerator.device) if dist.world > 1 else None)
    if method.conditions_on_budget and not has_budget_input(parts.student):
        attach(parts.student, cfg.method.budget_clip)
    optimizer = build_optimizer(cfg.optim, parts.student)
    # under FSDP the optimiser is re-pointed at the sharded parameters, and the student at the FSDP root
    parts.student, student_forward, optimizer = dist.prepare(parts.student, optimizer)
    parts.teacher = dist.prepare_teacher(parts.teacher, cfg.model.teacher)
    parts.teachers = {name: dist.prepare_teacher(t, teacher_config(cfg, name)) for name, t in parts.teachers.items()}
    r = cfg.rollout
    # the engine only needs the architecture from this path: the student's weights are pushed before sampling
    sampler = build_sampler(cfg, parts, resolve_model_path(cfg.model.student.name_or_path, cfg), dist.rank)
    logger = MetricsLogger(run_dir, cfg, resume=resume is not None) if dist.is_main else None
    if dist.is_main:
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    return Run(cfg, run_dir, dist, parts, method, student_forward, optimizer, build_scheduler(optimizer, cfg.optim),
               generation_config(parts.tokenizer, r.max_new_tokens, r.temperature, r.top_p, False),
               # every rank samples its own prompts (rank 0 draws exactly what a single process draws)
               PromptStream(parts.task.train, cfg.seed + dist.rank),
               TeacherSolutions(absolute(cfg.paths.cache), parts.teacher.name_or_path, r.max_new_tokens),
               sampler, logger, resume)


def start_or_resume(run: Run) -> LoopState:
    """The loop state to start from: a checkpoint's (optimiser, scheduler, method, prompt stream, RNGs and
    logs put back as they were), or a fresh one after the start-of-run evaluations."""
    cfg, dist = run.cfg, run.dist
    if dist.is_main:  # the marker tells of the stop this start continues (or overwrites): a new stop writes its own
        (run.run_dir / MARKER).unlink(missing_ok=True)
    if run.resume is not None:
        path, trainer, saved = run.resume
        if dist.is_main:
            checkpoint.restore_logs(path, run.run_dir)
        run.optimizer.load_state_dict(trainer["optimizer"])
        run.scheduler.load_state_dict(trainer["scheduler"])
        run.method.load_state_dict(trainer["method"])
        run.stream.load_state_dict(trainer["stream"])
        checkpoint.set_rng_state(trainer["rng"])
        log.info("resumed from %s at step %d", path, saved["step"] + 1)
        return LoopState(saved["step"], saved["start_reports"], saved["bad_steps"], saved["bad_run"], path)
    if dist.is_main:  # a fresh run (overwrite=true included) starts its logs from nothing
        for name in ("metrics.jsonl", "evals.jsonl"):
            (run.run_dir / name).unlink(missing_ok=True)
        if cfg.overwrite:  # and nothing of the run it replaces may pass for its own: a resume would pick up the
            (run.run_dir / "summary.json").unlink(missing_ok=True)  # old checkpoints, pruning would delete its own
            shutil.rmtree(run.run_dir / "checkpoints", ignore_errors=True)
    state = LoopState()
    if cfg.eval.at_start and run.evaluates:
        state.start_reports["student"] = evaluate_and_log(run, 0)
        state.start_reports["teacher"], _ = evaluate(run.parts, cfg, policy=run.parts.teacher)
        log.info("before training: %s", format_report(state.start_reports["student"]))
    # Re-seed at the start of the loop: set-up (building or loading models, the first from_pretrained of a
    # process, evaluations) draws from the global RNGs differently in a fresh process, a later job of a
    # multirun, or with a cold cache; the RL run itself must depend on the seed alone.
    seed_everything(cfg.seed + dist.rank)
    return state


def evaluate_and_log(run: Run, step: int, final: bool = False) -> dict:
    """Evaluate the student on the held-out problems; the main process appends the report to
    ``evals.jsonl`` and the metrics, and at the end writes ``eval.json`` with every sample."""
    t = time.time()
    report, records = evaluate(run.parts, run.cfg, with_samples=final)
    report["seconds"] = time.time() - t
    if not run.dist.is_main:
        return report
    with (run.run_dir / "evals.jsonl").open("a") as fh:
        fh.write(json.dumps({"step": step, **report}) + "\n")
    if final:
        write_eval(run.run_dir, report, records)
    run.logger.log({"step": step, **{f"eval/{k}": v for k, v in report.items() if isinstance(v, int | float)}})
    return report


def save_checkpoint(run: Run, state: LoopState, step: int) -> None:
    dist, parts = run.dist, run.parts
    # under FSDP each rank holds its own shard of the optimiser state; under DDP they are all equal
    per_rank = {"stream": run.stream.state_dict()}
    if dist.sharded:
        per_rank["optimizer"] = run.optimizer.state_dict()
    trainer = {"optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
               "method": run.method.state_dict()}
    saved = {"start_reports": state.start_reports, "bad_steps": state.bad_steps, "bad_run": state.bad_run}
    state.last_checkpoint = checkpoint.save(run.run_dir, step, run.cfg, parts.student, parts.tokenizer, trainer, saved,
                                            run.cfg.checkpoint.keep, dist, per_rank)


def finish(run: Run, state: LoopState, train_seconds: float) -> dict:
    """Save the student, evaluate it and write ``summary.json`` (the main process; the others return {})."""
    cfg, dist, parts = run.cfg, run.dist, run.parts
    weights = None
    if dist.world > 1:  # ranks of one run must end equal: each records a digest of its weights
        weights = dist.state_dict(parts.student)  # gathered from every rank under FSDP
        write_rank_state(run.run_dir, dist.rank, weights, run.method.state_dict())
    if cfg.save_student and dist.is_main:
        student = parts.student.model if dist.sharded else parts.student
        with disk_space_hint(run.run_dir, "the final student", parameter_bytes(student)):
            save_student(student, parts.tokenizer, run.run_dir / "student",
                         state_dict=weights if dist.sharded else None)
    dist.barrier()
    final = evaluate_and_log(run, cfg.optim.steps, final=True) if run.evaluates else None
    if not dist.is_main:
        return {}
    summary = {"method": run.method.name, "threshold": cfg.constraint.threshold, "steps": cfg.optim.steps,
               "trains_on_budget": run.method.trains_on_budget,
               "train_seconds": train_seconds, "bad_steps": state.bad_steps, "method_state": run.method.state_dict(),
               "processes": dist.world, "sharding": dist.kind, "teacher_sharded": isinstance(parts.teacher, Sharded),
               **final}
    if "student" in state.start_reports:
        student, teacher = state.start_reports["student"], state.start_reports["teacher"]
        summary["start_accuracy_sampled"] = student["accuracy_sampled"]
        summary["start_accuracy_greedy"] = student["accuracy_greedy"]
        summary["start_satisfaction_rate"] = student["satisfaction_rate"]
        summary["teacher_accuracy_sampled"] = teacher["accuracy_sampled"]
        summary["teacher_accuracy_greedy"] = teacher["accuracy_greedy"]
        if "families" in teacher:  # where the teacher is right and wrong (task.family_field)
            summary["teacher_families"] = teacher["families"]
    # summary.json says the run finished: written whole or not at all (a full disk must not leave half of one)
    with disk_space_hint(run.run_dir, "summary.json"):
        tmp = run.run_dir / ".summary.json.tmp"
        with tmp.open("w") as fh:
            fh.write(json.dumps(summary, indent=2))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, run.run_dir / "summary.json")
    run.logger.summary({k: v for k, v in summary.items() if isinstance(v, int | float)})
    run.logger.close()
    return summary
