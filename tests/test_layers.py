"""The package's layers: lower layers never import higher ones, so each can be read (and tested) alone."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cdistill"


def imports_of(path: Path) -> list[str]:
    """Every name a file imports, at the top or inside a function, as a dotted path: ``from cdistill import
    train`` is ``cdistill.train``, and relative imports are resolved against the file's package."""
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            names += [f"{base}.{a.name}" for a in node.names]
    return names


def test_objectives_import_nothing_of_cdistill_outside_themselves_nor_models_trainers_or_configs():
    banned = ("torch.nn", "transformers", "hydra", "omegaconf")
    for path in (PACKAGE / "objectives").glob("*.py"):
        for name in imports_of(path):
            assert not name.startswith(banned), f"objectives/{path.name} imports {name}"
            if name.startswith("cdistill"):
                assert name.startswith("cdistill.objectives"), f"objectives/{path.name} imports {name}"


@pytest.mark.parametrize("layer", ["models", "rollout", "tasks"])
def test_models_rollout_and_tasks_never_import_the_loop_or_the_methods(layer):
    banned = ("cdistill.train", "cdistill.methods", "cdistill.scoring", "cdistill.eval", "cdistill.cli",
              "cdistill.config")
    files = list((PACKAGE / layer).glob("*.py"))
    assert files
    for path in files:
        for name in imports_of(path):
            assert not name.startswith(banned), f"{layer}/{path.name} imports {name}"


def test_methods_see_batches_not_models():
    banned = ("cdistill.models", "cdistill.train", "cdistill.scoring", "cdistill.eval", "transformers")
    for path in (PACKAGE / "methods").glob("*.py"):
        for name in imports_of(path):
            assert not name.startswith(banned), f"methods/{path.name} imports {name}"


@pytest.mark.parametrize(("module", "absent"), [
    ("cdistill.objectives", ("transformers", "cdistill.models", "cdistill.methods", "cdistill.train")),
    ("cdistill.methods", ("transformers", "cdistill.models", "cdistill.train", "cdistill.scoring")),
])
def test_importing_a_lower_layer_loads_nothing_above_it(module, absent):
    # what a module drags in through its imports' imports, which the file-by-file checks above cannot see
    code = f"import sys, {module}; print([m for m in sys.modules if m.startswith({absent!r})])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
