"""The run's models: loading them by address (``loading``), the scored forward on completions
(``forward``), the saute student's budget input (``budget_input``), the embedded default's models and the
supervised training that builds them (``embedded``, ``sft``), and their wrappers for several processes
(``parallel``)."""

from cdistill.models.forward import CompletionForward, Sequences, completion_forward, prompt_groups
from cdistill.models.loading import Components, ModelError, build_components, resolve_model_path, save_student

__all__ = [
    "CompletionForward",
    "Components",
    "ModelError",
    "Sequences",
    "build_components",
    "completion_forward",
    "prompt_groups",
    "resolve_model_path",
    "save_student",
]
