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


def module_of(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Which cdistill modules each cdistill module imports, at the top or inside a function: ``from cdistill.x
    import name`` is the module ``cdistill.x.name`` when there is one, else ``cdistill.x`` (its ``__init__``)."""
    modules = {module_of(path): path for path in PACKAGE.rglob("*.py")}
    graph = {}
    for module, path in modules.items():
        graph[module] = set()
        for name in imports_of(path):
            # the longest prefix that is a module; the parent packages' __init__s it also loads are not edges:
            # a package re-exporting its children would otherwise make every child a cycle with its __init__
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name:
                graph[module].add(name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module, and the modules that import themselves
    (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1 or v in graph[v]:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_cycles_finds_a_circle_and_a_self_import_but_not_a_chain():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"a"}, "b": {"a"}}) == [["a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_among_cdistill_modules_function_level_imports_included():
    # a cycle hidden in a function-level import works only as long as nobody moves that import to the top,
    # and it means neither module can be read (or tested) without the other
    graph = import_graph()
    assert "cdistill.cli" in graph and "cdistill.rollout.sampling" in graph  # the walk found the package
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n".join(
        " <-> ".join(c) + ": " + ", ".join(f"{a} -> {b}" for a in c for b in sorted(graph[a]) if b in c)
        for c in found)
