"""``seqkd``: sequence-level KD (Kim & Rush 2016), supervised fine-tuning on the teacher's own greedy
solutions to the training prompts, generated once and cached on disk (``paths.cache``)."""

from cdistill.methods.sft import SFT
from cdistill.rollout.source import Source


class SeqKD(SFT):
    name = "seqkd"
    uses_cached_teacher_solutions = True

    def source(self, step: int) -> Source:
        return Source.TEACHER_CACHED
