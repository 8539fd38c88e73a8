"""The training loop: generate → score → objective → update → log. It holds no mathematics of its own:
every number it computes comes from ``cdistill.objectives`` through a method (``cdistill.methods``)."""

from __future__ import annotations

import contextlib
import json
import logging
import random
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf
from tqdm.auto import tqdm

from cdistill import checkpoint
from cdistill.budget import attach, has_budget_input, save_student
from cdistill.distributed import Dist, Sharded, write_rank_state
from cdistill.engines import build_sampler
from cdistill.evaluate import evaluate, format_report, write_eval
from cdistill.logger import MetricsLogger
from cdistill.methods import build_method
from cdistill.metrics import batch_summary
from cdistill.models import prompt_groups
from cdistill.objectives import clipped_policy_loss, truncated_importance_weights
from cdistill.rollout import generation_config
from cdistill.runtime import (
    absolute,
    autocast,
    build_components,
    out_of_memory_hint,
    pick_device,
    resolve_model_path,
    seed_everything,
)
from cdistill.scoring import Live, score_rollout
from cdistill.sft import lr_lambda
from cdistill.sources import SAMPLED, TeacherSolutions, collect
from cdistill.validate import validate

log = logging.getLogger(__name__)


class PromptStream:
    """Training problems in a seeded random order, reshuffled at each pass."""

    def __init__(self, problems, seed: int):
        self.problems, self.rng, self.order = problems, random.Random(seed), []

    def state_dict(self) -> dict:
        return {"rng": self.rng.getstate(), "order": list(self.order)}

    def load_state_dict(self, state: dict) -> None:
        self.rng.setstate(state["rng"])
        self.order = list(state["order"])

    def next(self, n: int):
        out = []
        while len(out) < n:
            if not self.order:
                self.order = list(range(len(self.problems)))
                self.rng.shuffle(self.order)
            out.append(self.problems[self.order.pop()])
        return out


def update(student, teacher, opt, sched, method, scored, seq, cfg, vocab, scorer, dist, first_pass=None):
    """One optimiser step per inner epoch, gradients accumulated over micro-batches of completions.

    ``first_pass`` (log-probs, entropies, hidden states of the whole batch, with their graph) is the forward
    pass that scoring already used: the first epoch differentiates it instead of running the student again.

    An optimiser step whose loss or gradient norm is not finite is skipped (gradients dropped, weights
    untouched) and counted in ``skipped``: one bad batch must not poison the weights.

    ``scorer`` is the student's forward as the launch wraps it (plain, DDP or FSDP2): gradients are synchronised
    across ranks, the token mean is over every rank's tokens, and ``dist`` applies a step on every rank or none.
    """
    o = cfg.optim
    adv = method.advantages(scored)
    # samples drawn by another engine (vLLM) are re-weighted towards the trainer's own policy
    is_weights = None
    if scored.sampler_logp is not None:
        is_weights = truncated_importance_weights(scored.old_logp, scored.sampler_logp, scored.mask,
                                                  cfg.rollout.importance_cap, cfg.rollout.importance_correction)
    denom = scored.mask.sum().clamp(min=1)
    if dist.world > 1:  # gradients are averaged over ranks: divide by the mean token count
        denom = dist.sum(denom.float()) / dist.world
    g = prompt_groups(scored.group_size, o.micro_batch, cfg.scoring.share_prompt)
    n = adv.shape[0]
    zero = torch.zeros((), device=adv.device)
    loss_sum, clip_sum, norm_sum, skipped = zero.clone(), zero.clone(), zero.clone(), 0
    for epoch in range(o.inner_epochs):
        opt.zero_grad(set_to_none=True)
        epoch_loss = zero.clone()
        for start in range(0, n, o.micro_batch):
            rows = torch.arange(start, min(n, start + o.micro_batch), device=adv.device)
            last = start + o.micro_batch >= n  # gradients are synchronised with the last micro-batch only
            with contextlib.nullcontext() if last or scorer.no_sync is None else scorer.no_sync():
                if first_pass is not None and epoch == 0:
                    logp, _, hidden = first_pass
                else:
                    logp, _, hidden = scorer(seq.select(rows), cfg.rollout.temperature, cfg.scoring.chunk, vocab, g)
                loss, st = clipped_policy_loss(logp, scored.old_logp[rows], adv[rows], scored.mask[rows],
                                               o.clip_low, o.clip_high, denom,
                                               None if is_weights is None else is_weights[rows])
                live = Live(rows, logp, hidden, scored.mask[rows], scored.teacher_logp[rows],
                            None if scored.teacher_hidden is None else scored.teacher_hidden[rows],
                            student.get_output_embeddings().weight, teacher.get_output_embeddings().weight,
                            cfg.scoring.chunk, vocab, cfg.rollout.temperature)
                extra = method.extra_loss(scored, live, denom)
                total = loss if extra is None else loss + extra
                total.backward()
            epoch_loss += total.detach()
            clip_sum += st["clip_frac"] * len(rows) / n
        grad_norm, applied = dist.step(student.parameters(), opt, o.grad_clip, torch.isfinite(epoch_loss))
        skipped += not applied
        sched.step()
        loss_sum += epoch_loss
        norm_sum += grad_norm.to(zero.device)
    k = o.inner_epochs
    return {"loss": float(loss_sum) / k, "clip_frac": float(clip_sum) / k, "grad_norm": float(norm_sum) / k,
            "skipped_updates": skipped}


class TrainingError(RuntimeError):
    """Training cannot go on (for example, every step's gradients are non-finite)."""


def train(cfg, run_dir: Path) -> dict:
    validate(cfg)
    dist = Dist(pick_device(cfg.device))
    resume_from = checkpoint.find(cfg.get("resume"), run_dir)
    if resume_from is not None:
        trainer_state, ckpt_state = checkpoint.load(resume_from, cfg, dist.rank, dist.world)
    seed_everything(cfg.seed)
    with dist.main_first():
        comp = build_components(cfg, student_path=str(resume_from / "student") if resume_from else None,
                                device=str(dist.accelerator.device) if dist.world > 1 else None)
    method = build_method(cfg.method, cfg.constraint, cfg.optim)
    student, tok = comp.student, comp.tokenizer
    if method.conditions_on_budget and not has_budget_input(student):
        attach(student, cfg.method.budget_clip)
    if dist.sharded and (cfg.model.student.get("lora") or method.conditions_on_budget):
        raise ValueError("under FSDP the student is trained whole and sampled with generate(): a LoRA student "
                         "(small enough to replicate) or saute's token loop runs with DDP instead")
    if dist.sharded and method.source(1) == "teacher_cached" and cfg.model.teacher.get("shard", True):
        raise ValueError("seqkd generates each rank's missing teacher solutions once, a different number of calls "
                         "per rank, which a sharded teacher cannot serve; set model.teacher.shard=false")
    # a LoRA student trains its adapter only
    opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=cfg.optim.lr,
                            weight_decay=cfg.optim.weight_decay, betas=tuple(cfg.optim.betas))
    # under FSDP the optimiser is re-pointed at the sharded parameters, and the student at the FSDP root
    student, scorer, opt = dist.prepare(student, opt)
    comp.student = student
    comp.teacher = dist.prepare_teacher(comp.teacher, cfg.model.teacher)
    steps = cfg.optim.steps
    # the scheduler counts optimiser steps: inner_epochs of them per training step
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lr_lambda(cfg.optim.warmup, steps * cfg.optim.inner_epochs, cfg.optim.schedule))
    gen = generation_config(tok, cfg.rollout.max_new_tokens, cfg.rollout.temperature, cfg.rollout.top_p, False)
    # every rank samples its own prompts (rank 0 draws exactly what a single process draws)
    stream = PromptStream(comp.task.train, cfg.seed + dist.rank)
    method.reduce_mean = dist.mean
    solutions = TeacherSolutions(absolute(cfg.paths.cache), comp.teacher.name_or_path, cfg.rollout.max_new_tokens)
    # the engine only needs the architecture from this path: the student's weights are pushed before sampling
    sampler = build_sampler(cfg, comp, resolve_model_path(cfg.model.student.name_or_path, cfg), dist.rank)

    if resume_from is not None:
        if dist.is_main:
            checkpoint.restore_logs(resume_from, run_dir)
    elif dist.is_main:  # a fresh run (overwrite=true included) starts its logs from nothing
        for name in ("metrics.jsonl", "evals.jsonl"):
            (run_dir / name).unlink(missing_ok=True)
    # the main process logs and saves; it evaluates alone unless the student is sharded (FSDP), when every
    # rank takes part in the evaluation's forwards
    logger = MetricsLogger(run_dir, cfg, resume=resume_from is not None) if dist.is_main else None
    if dist.is_main:
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    evaluates = dist.is_main or dist.sharded

    def run_eval(step: int, final: bool) -> dict:
        t = time.time()
        report, records = evaluate(comp, cfg, with_samples=final)
        report["seconds"] = time.time() - t
        if not dist.is_main:
            return report
        with (run_dir / "evals.jsonl").open("a") as fh:
            fh.write(json.dumps({"step": step, **report}) + "\n")
        if final:
            write_eval(run_dir, report, records)
        logger.log({"step": step, **{f"eval/{k}": v for k, v in report.items() if isinstance(v, int | float)}})
        return report

    first_step, start_reports, bad_total, bad_run = 1, {}, 0, 0
    if resume_from is not None:
        opt.load_state_dict(trainer_state["optimizer"])
        sched.load_state_dict(trainer_state["scheduler"])
        method.load_state_dict(trainer_state["method"])
        stream.load_state_dict(trainer_state["stream"])
        first_step, start_reports = ckpt_state["step"] + 1, ckpt_state["start_reports"]
        bad_total, bad_run = ckpt_state["bad_steps"], ckpt_state["bad_run"]
        checkpoint.set_rng_state(trainer_state["rng"])
        log.info("resumed from %s at step %d", resume_from, first_step)
    else:
        if cfg.eval.at_start and evaluates:
            start_reports["student"] = run_eval(0, final=False)
            start_reports["teacher"], _ = evaluate(comp, cfg, policy=comp.teacher)
            log.info("before training: %s", format_report(start_reports["student"]))
        # Re-seed at the start of the loop: set-up (building or loading models, the first from_pretrained of
        # a process, evaluations) draws from the global RNGs differently in a fresh process, a later job of a
        # multirun, or with a cold cache; the RL run itself must depend on the seed alone.
        seed_everything(cfg.seed + dist.rank)
    ck, guards = cfg.checkpoint, cfg.guards
    last_ckpt = resume_from
    t_start = time.time()
    bar = tqdm(range(first_step, steps + 1), desc=f"{method.name}", disable=not cfg.logging.progress,
               mininterval=1.0, initial=first_step - 1, total=steps)
    for step in bar:
        t0 = time.time()
        source = method.source(step)
        # the same number of completions per step whatever the source: k samples of each prompt, or one
        # given completion for each of k times as many prompts
        k = cfg.rollout.samples_per_prompt if source in SAMPLED else 1
        problems = stream.next(cfg.rollout.prompts_per_step * cfg.rollout.samples_per_prompt // k)
        with autocast(cfg, comp.device):
            rollout = collect(source, comp, cfg, problems, k, gen, solutions, sampler)
            t1 = time.time()
            per_sample = [p for p in problems for _ in range(k)]
            # one student forward serves scoring and the first update when the batch is one micro-batch
            shared_pass = None
            if cfg.scoring.reuse_student_pass and len(per_sample) <= cfg.optim.micro_batch:
                with out_of_memory_hint("the student forward", "lower optim.micro_batch or set "
                                        "scoring.reuse_student_pass=false"):
                    shared_pass = scorer(rollout.seq.for_autograd(), cfg.rollout.temperature, cfg.scoring.chunk,
                                        comp.vocab, prompt_groups(rollout.group_size, len(per_sample),
                                                                  cfg.scoring.share_prompt))
            scored, extras = score_rollout(rollout, per_sample, comp.task, student, comp.teacher, cfg.constraint,
                                           cfg.rollout.temperature, cfg.scoring.chunk, comp.vocab,
                                           cfg.scoring.micro_batch, method.needs_teacher_hidden,
                                           None if shared_pass is None else [x.detach() for x in shared_pass],
                                           cfg.scoring.share_prompt)
            t2 = time.time()
            with out_of_memory_hint("the student update", "lower optim.micro_batch (gradients are accumulated)"):
                upd = update(student, comp.teacher, opt, sched, method, scored, rollout.seq, cfg, comp.vocab,
                             scorer, dist, shared_pass)
            t3 = time.time()
        if sampler is not None:
            sampler.weights_changed()
        bad_run = bad_run + 1 if upd["skipped_updates"] else 0
        bad_total += bool(upd["skipped_updates"])
        record = {"step": step, **batch_summary(scored, extras), **upd, **method.after_step(scored),
                  "bad_steps": bad_total, "lr": sched.get_last_lr()[0], "time_generate": t1 - t0,
                  "time_score": t2 - t1, "time_update": t3 - t2, "time_step": t3 - t0}
        tokens = float(scored.mask.sum())  # per-token metrics average over every rank's tokens
        record = dist.weighted(record, {"sampled_kl_per_token": tokens, "entropy": tokens})
        if logger is not None:
            logger.log(record)
        bar.set_postfix(reward=f"{record['reward']:.2f}", div=f"{record['divergence_mean']:.2f}",
                        sat=f"{record['satisfaction_rate']:.2f}", refresh=False)
        if bad_run >= guards.max_bad_steps:
            where = f"; the last good checkpoint is {last_ckpt}" if last_ckpt else ""
            raise TrainingError(f"stopped at step {step}: {bad_run} steps in a row had a non-finite loss or "
                                f"gradient (lower optim.lr, check the data){where}")
        if cfg.eval.every and step % cfg.eval.every == 0 and step < steps and evaluates:
            run_eval(step, final=False)
        if ck.every and step % ck.every == 0 and step < steps and not bad_run:
            # under FSDP each rank holds its own shard of the optimiser state; under DDP they are all equal
            per_rank = {"stream": stream.state_dict(), **({"optimizer": opt.state_dict()} if dist.sharded else {})}
            last_ckpt = checkpoint.save(
                run_dir, step, cfg, student, tok,
                {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "method": method.state_dict()},
                {"start_reports": start_reports, "bad_steps": bad_total, "bad_run": bad_run}, ck.keep, dist, per_rank)
    train_seconds = time.time() - t_start
    final = None
    if dist.world > 1:
        state = dist.state_dict(student)  # gathered from every rank under FSDP
        write_rank_state(run_dir, dist.rank, state, method.state_dict())
        if dist.sharded and cfg.save_student and dist.is_main:
            save_student(student.model, tok, run_dir / "student", state_dict=state)
        dist.barrier()
        if dist.sharded:
            final = run_eval(steps, final=True)  # every rank's part in the forwards; the main process writes it
        if not dist.is_main:
            return {}
    if cfg.save_student and not dist.sharded:
        save_student(student, tok, run_dir / "student")
    if final is None:
        final = run_eval(steps, final=True)
    summary = {"method": method.name, "threshold": cfg.constraint.threshold, "steps": steps,
               "train_seconds": train_seconds, "bad_steps": bad_total, "method_state": method.state_dict(),
               "processes": dist.world, "sharding": dist.kind, "teacher_sharded": isinstance(comp.teacher, Sharded),
               **final}
    if "student" in start_reports:
        s_rep, t_rep = start_reports["student"], start_reports["teacher"]
        summary["start_accuracy_sampled"] = s_rep["accuracy_sampled"]
        summary["start_accuracy_greedy"] = s_rep["accuracy_greedy"]
        summary["start_satisfaction_rate"] = s_rep["satisfaction_rate"]
        summary["teacher_accuracy_sampled"] = t_rep["accuracy_sampled"]
        summary["teacher_accuracy_greedy"] = t_rep["accuracy_greedy"]
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    logger.summary({k: v for k, v in summary.items() if isinstance(v, int | float)})
    logger.close()
    return summary
