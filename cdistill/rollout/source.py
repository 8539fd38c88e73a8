"""Where a training batch's completions come from: a name the methods give and ``rollout.sources`` serves.
It imports nothing, so that methods (which only name a source) do not load models or transformers."""

from enum import Enum


class Source(str, Enum):
    """Where a training batch's completions come from (``Method.source``)."""

    STUDENT = "student"  # the student's samples (on-policy)
    TEACHER = "teacher"  # the teacher's samples
    BUDGET = "budget"  # the budget-conditioned student's samples, the teacher tracking the budget (saute)
    REFERENCE = "reference"  # the dataset's reference solutions
    TEACHER_CACHED = "teacher_cached"  # the teacher's greedy solutions, generated once and cached on disk

    @property
    def sampled(self) -> bool:
        """Several completions per prompt, the group that advantages are normalised over."""
        return self in (Source.STUDENT, Source.TEACHER, Source.BUDGET)
