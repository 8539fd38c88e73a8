"""The training loop: generate → score → objective → update → log. It holds no mathematics of its own:
every number it computes comes from ``cdistill.objectives`` through a method (``cdistill.methods``)."""

from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf
from tqdm.auto import tqdm

from cdistill.evaluate import evaluate, format_report, write_eval
from cdistill.logger import MetricsLogger
from cdistill.methods import build_method
from cdistill.metrics import batch_summary
from cdistill.models import score
from cdistill.objectives import clipped_policy_loss
from cdistill.rollout import generate, generation_config
from cdistill.runtime import autocast, build_components, seed_everything
from cdistill.scoring import costs_for, score_rollout
from cdistill.sft import lr_lambda
from cdistill.validate import validate

log = logging.getLogger(__name__)


class PromptStream:
    """Training problems in a seeded random order, reshuffled at each pass."""

    def __init__(self, problems, seed: int):
        self.problems, self.rng, self.order = problems, random.Random(seed), []

    def next(self, n: int):
        out = []
        while len(out) < n:
            if not self.order:
                self.order = list(range(len(self.problems)))
                self.rng.shuffle(self.order)
            out.append(self.problems[self.order.pop()])
        return out


def update(student, teacher, opt, sched, method, scored, seq, cfg, vocab):
    """One optimiser step per inner epoch, gradients accumulated over micro-batches of completions."""
    o = cfg.optim
    adv = method.advantages(scored)
    denom = scored.mask.sum().clamp(min=1)
    n = adv.shape[0]
    stats = {"loss": 0.0, "clip_frac": 0.0, "grad_norm": 0.0}
    for _ in range(o.inner_epochs):
        opt.zero_grad(set_to_none=True)
        for start in range(0, n, o.micro_batch):
            rows = torch.arange(start, min(n, start + o.micro_batch), device=adv.device)
            logp, _, hidden = score(student, seq.select(rows), cfg.rollout.temperature, cfg.scoring.chunk, vocab)
            loss, st = clipped_policy_loss(logp, scored.old_logp[rows], adv[rows], scored.mask[rows],
                                           o.clip_low, o.clip_high, denom)
            cost = None
            if method.wants_cost_gradient:
                t_hidden = None if scored.teacher_hidden is None else scored.teacher_hidden[rows]
                cost = costs_for(cfg.constraint.cost, logp, scored.teacher_logp[rows], hidden, t_hidden,
                                 student.get_output_embeddings().weight, teacher.get_output_embeddings().weight,
                                 scored.mask[rows], cfg.scoring.chunk, vocab, cfg.rollout.temperature)
            extra = method.extra_loss(scored, rows, cost, denom)
            total = loss if extra is None else loss + extra
            total.backward()
            stats["loss"] += float(total.detach()) / o.inner_epochs
            stats["clip_frac"] += float(st["clip_frac"]) * len(rows) / n / o.inner_epochs
        grad_norm = torch.nn.utils.clip_grad_norm_(student.parameters(), o.grad_clip)
        stats["grad_norm"] += float(grad_norm) / o.inner_epochs
        opt.step()
        sched.step()
    return stats


def train(cfg, run_dir: Path) -> dict:
    validate(cfg)
    seed_everything(cfg.seed)
    comp = build_components(cfg)
    method = build_method(cfg.method, cfg.constraint, cfg.optim)
    student, tok = comp.student, comp.tokenizer
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay,
                            betas=tuple(cfg.optim.betas))
    steps = cfg.optim.steps
    # the scheduler counts optimiser steps: inner_epochs of them per training step
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lr_lambda(cfg.optim.warmup, steps * cfg.optim.inner_epochs, cfg.optim.schedule))
    gen = generation_config(tok, cfg.rollout.max_new_tokens, cfg.rollout.temperature, cfg.rollout.top_p, False)
    stream = PromptStream(comp.task.train, cfg.seed)
    logger = MetricsLogger(run_dir, cfg)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))

    def run_eval(step: int, final: bool) -> dict:
        t = time.time()
        report, records = evaluate(comp, cfg, with_samples=final)
        report["seconds"] = time.time() - t
        with (run_dir / "evals.jsonl").open("a") as fh:
            fh.write(json.dumps({"step": step, **report}) + "\n")
        if final:
            write_eval(run_dir, report, records)
        logger.log({"step": step, **{f"eval/{k}": v for k, v in report.items() if isinstance(v, int | float)}})
        return report

    if cfg.eval.at_start:
        start_report = run_eval(0, final=False)
        teacher_report, _ = evaluate(comp, cfg, policy=comp.teacher)
        log.info("before training: %s", format_report(start_report))
    # Re-seed at the start of the loop: set-up (building or loading models, the first from_pretrained of a
    # process, evaluations) draws from the global RNGs differently in a fresh process, a later job of a
    # multirun, or with a cold cache; the RL run itself must depend on the seed alone.
    seed_everything(cfg.seed)
    t_start = time.time()
    bar = tqdm(range(1, steps + 1), desc=f"{method.name}", disable=not cfg.logging.progress, mininterval=1.0)
    for step in bar:
        t0 = time.time()
        problems = stream.next(cfg.rollout.prompts_per_step)
        k = cfg.rollout.samples_per_prompt
        with autocast(cfg, comp.device):
            rollout = generate(student, tok, [comp.task.prompt(p) for p in problems], k, gen, comp.device,
                               comp.task.add_special_tokens)
            t1 = time.time()
            per_sample = [p for p in problems for _ in range(k)]
            scored, extras = score_rollout(rollout, per_sample, comp.task, student, comp.teacher, cfg.constraint,
                                           cfg.rollout.temperature, cfg.scoring.chunk, comp.vocab,
                                           cfg.scoring.micro_batch)
            t2 = time.time()
            upd = update(student, comp.teacher, opt, sched, method, scored, rollout.seq, cfg, comp.vocab)
            t3 = time.time()
        record = {"step": step, **batch_summary(scored, extras), **upd, **method.after_step(scored),
                  "lr": sched.get_last_lr()[0], "time_generate": t1 - t0, "time_score": t2 - t1,
                  "time_update": t3 - t2, "time_step": t3 - t0}
        logger.log(record)
        bar.set_postfix(reward=f"{record['reward']:.2f}", div=f"{record['divergence_mean']:.2f}",
                        sat=f"{record['satisfaction_rate']:.2f}", refresh=False)
        if cfg.eval.every and step % cfg.eval.every == 0 and step < steps:
            run_eval(step, final=False)
    train_seconds = time.time() - t_start
    if cfg.save_student:
        student.save_pretrained(run_dir / "student")
        tok.save_pretrained(run_dir / "student")
    final = run_eval(steps, final=True)
    summary = {"method": method.name, "threshold": cfg.constraint.threshold, "steps": steps,
               "train_seconds": train_seconds, "method_state": method.state_dict(), **final}
    if cfg.eval.at_start:
        summary["start_accuracy_sampled"] = start_report["accuracy_sampled"]
        summary["start_accuracy_greedy"] = start_report["accuracy_greedy"]
        summary["start_satisfaction_rate"] = start_report["satisfaction_rate"]
        summary["teacher_accuracy_sampled"] = teacher_report["accuracy_sampled"]
        summary["teacher_accuracy_greedy"] = teacher_report["accuracy_greedy"]
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    logger.summary({k: v for k, v in summary.items() if isinstance(v, int | float)})
    logger.close()
    return summary
