"""``saute``: the state-augmented ablation (Sootla et al. 2022) that ``cmdp`` avoids.

Same modified reward as ``cmdp``, but the student also sees the normalised remaining budget z_t / d,
through a small learned projection added to its input embeddings (``models.budget_input``, saved beside the
checkpoint). z_t depends on the teacher's log-probs, so sampling, at training and at evaluation alike,
runs the teacher beside the student at every token: the deployment cost the paper's method removes.
"""

from cdistill.methods.cmdp import CMDP
from cdistill.rollout.source import Source


class Saute(CMDP):
    name = "saute"
    conditions_on_budget = True
    follows_several_budgets = False
    several_budgets_refusal = ("saute conditions the student on one remaining budget, tracked token by token beside "
                               "one teacher; several budgets (constraints) would need an input and a tracking "
                               "teacher per budget: use cmdp (the same absorbing reward, without the input), or one "
                               "constraint")

    def source(self, step: int) -> Source:
        return Source.BUDGET
