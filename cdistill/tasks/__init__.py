"""Tasks: where prompts come from, how they are shown to a model, and how answers are graded."""

from cdistill.tasks.base import Problem, Task, build_task

__all__ = ["Problem", "Task", "build_task"]
