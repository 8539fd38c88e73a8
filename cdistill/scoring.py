"""Scoring rollouts: task reward, student and teacher log-probs, costs and constraint statistics.

Training and evaluation both call ``score_rollout``, so the satisfaction rate reported by ``cdistill
eval`` is computed by exactly the code that shaped the training reward.
"""

from __future__ import annotations

import torch

from cdistill.models.forward import CompletionForward, completion_forward, output_weight, prompt_groups
from cdistill.objectives import COSTS, Budget, Scored, ScoringSpec, constraint_stats, logratio_cost
from cdistill.objectives.topk import TopK
from cdistill.rollout.sampling import Rollout
from cdistill.runtime import out_of_memory_hint
from cdistill.teachers import FIRST, other_constraints, other_teachers


def scoring_spec(cfg, vocab: int, group_size: int = 1) -> ScoringSpec:
    """The student's scoring settings of a run: log-probs at the rollout temperature."""
    return ScoringSpec(cfg.rollout.temperature, cfg.scoring.chunk, vocab, group_size)


@torch.no_grad()  # not inference_mode: see rollout.sampling.generate
def score_rollout(rollout: Rollout, problems, parts, cfg, policy=None, keep_teacher_hidden: bool = False,
                  student_pass: CompletionForward | None = None) -> Scored:
    """Score every completion of ``rollout`` (``problems`` holds one entry per completion) as sampled by
    ``policy`` (default: the student).

    ``student_pass``: the student's forward on the whole batch, already run (detached here). The teacher's
    [B, T, H] hidden states (a served teacher's top-k log-probs) are kept for full-vocabulary terms of the update
    (the token_kl cost's direct gradient, ``gkd``, ``weakest_link``) when ``keep_teacher_hidden`` or the cost
    needs them.
    """
    policy = parts.student if policy is None else policy
    seq, micro_batch, constraint = rollout.seq, cfg.scoring.micro_batch, cfg.constraint
    cost = COSTS[constraint.cost]
    spec = scoring_spec(cfg, parts.vocab, prompt_groups(rollout.group_size, micro_batch, cfg.scoring.share_prompt))
    teacher_spec = spec.replace(temperature=1.0)
    # a teacher behind a server (cdistill.models.served) has no weights here; evaluated as the policy, it is
    # scored once, at temperature 1, and its divergence from itself is zero
    served_policy = getattr(policy, "served", False)
    weights = {"student_weight": output_weight(policy), "teacher_weight": output_weight(parts.teacher)}
    # further budgets, each on its teacher (None: not measurable here, a teacher evaluated in its own tokenizer)
    teachers = getattr(parts, "teachers", {})
    others = other_constraints(cfg) if teachers is not None else []
    # in config order, the same on every rank: sharded teachers' forwards are collectives
    further = other_teachers(cfg) if others else []
    parts_of, teacher_hidden, further_logp = [], [], {name: [] for name in further}
    for start in range(0, seq.input_ids.shape[0], micro_batch):
        mb = seq.select(slice(start, start + micro_batch))
        if student_pass is None:
            s = completion_forward(policy, mb, teacher_spec if served_policy else spec)
        else:
            s = CompletionForward(*(None if x is None else x[start : start + micro_batch].detach()
                                    for x in student_pass))
        with out_of_memory_hint(f"the teacher forward on {mb.input_ids.shape[0]} sequences of {mb.input_ids.shape[1]} "
                                "tokens", "lower scoring.micro_batch or scoring.chunk, or load the teacher in "
                                "bfloat16 (model.teacher.dtype=bfloat16)"):
            t = s if served_policy and policy is parts.teacher else completion_forward(parts.teacher, mb, teacher_spec)
        if served_policy and cost.needs_hidden:
            c = torch.zeros_like(s.logp)
        else:
            c = cost.per_token(student_logp=s.logp, teacher_logp=t.logp, mask=mb.completion_mask,
                               student_hidden=s.hidden, teacher_hidden=t.hidden, teacher_topk=t.topk, spec=spec,
                               **weights)
        parts_of.append((s.logp, t.logp, c, s.entropy))
        for name in further:
            with out_of_memory_hint(f"teacher {name!r}'s forward on {mb.input_ids.shape[0]} sequences", "lower "
                                    "scoring.micro_batch, or load it in bfloat16 (model.teachers.<name>.dtype)"):
                further_logp[name].append(completion_forward(teachers[name], mb, teacher_spec).logp)
        if keep_teacher_hidden or cost.needs_hidden:
            teacher_hidden.append(t.hidden if t.topk is None else t.topk)
    s_logp, t_logp, costs, entropy = (torch.cat(x) for x in zip(*parts_of, strict=True))
    mask = seq.completion_mask
    reward = torch.tensor([parts.task.reward(t, p) for t, p in zip(rollout.texts, problems, strict=True)],
                          device=mask.device)
    kept = teacher_hidden[0] if teacher_hidden else None
    topk = TopK(*(torch.cat(x) for x in zip(*teacher_hidden, strict=True))) if isinstance(kept, TopK) else None
    logps = {FIRST: t_logp, **{name: torch.cat(x) for name, x in further_logp.items()}}
    budgets = []
    for name, c in others:
        tl = logps[c.teacher]
        cc = COSTS[c.cost].per_token(student_logp=s_logp, teacher_logp=tl, mask=mask)
        budgets.append(Budget(name, tl, cc, constraint_stats(cc, mask, c.threshold, c.kind)))
    return Scored(mask=mask, task_reward=reward, old_logp=s_logp, teacher_logp=t_logp, costs=costs,
                  stats=constraint_stats(costs, mask, constraint.threshold, constraint.kind),
                  group_size=rollout.group_size, teacher_topk=topk,
                  teacher_hidden=torch.cat(teacher_hidden) if teacher_hidden and topk is None else None,
                  sampler_logp=rollout.sampler_logp, entropy=entropy, sampled_kl=logratio_cost(s_logp, t_logp, mask),
                  others=tuple(budgets))
