"""The house rules a newcomer can rely on, checked from the source: no library module over 450 lines, no function
over 80 lines (its docstring not counted), no import circle among the library's modules."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "diffusers_side"
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 80


def python_files(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts)


def function_lengths(path: Path) -> list[tuple[str, int]]:
    """Each function's length in lines, from its ``def`` to its last line, less its docstring."""
    lengths = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            first = node.body[0]
            docstring = isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str)
            doc_lines = first.end_lineno - first.lineno + 1 if docstring and len(node.body) > 1 else 0
            lengths.append((f"{path.relative_to(ROOT)}:{node.lineno} {node.name}", node.end_lineno - node.lineno + 1 - doc_lines))
    return lengths


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_imports(path: Path, known: set[str]) -> set[str]:
    """The library modules ``path`` imports at module level (imports inside functions are deferred on purpose)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # `from . import a, b` depends on the submodules a and b; `from .x import name` on the module x
            submodules = [f"{target}.{alias.name}" for alias in node.names if f"{target}.{alias.name}" in known]
            candidates = submodules or [target]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        found.update(c for c in candidates if c in known and c != name)
    return found


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), i.e. the import circles."""
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_no_library_module_is_over_450_lines():
    long = {str(p.relative_to(ROOT)): n for p in python_files("diffusers_side") if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines (split them by concept): {long}"


def test_no_function_is_over_80_lines():
    long = [(name, n) for p in python_files("diffusers_side", "training", "benchmarks") for name, n in function_lengths(p) if n > MAX_FUNCTION_LINES]
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines, docstrings not counted: {long}"


def test_the_library_has_no_import_circle():
    files = python_files("diffusers_side")
    known = {module_name(p) for p in files}
    graph = {module_name(p): module_imports(p, known) for p in files}
    assert graph["diffusers_side.workflows.study"] >= {"diffusers_side.workflows.demo"}, "the checker reads relative imports"
    assert not import_cycles(graph), f"import circles: {import_cycles(graph)}"


# README's layout table, lowest layer first: a package imports (at module level) only from those before it
LAYERS = ["utils", "storage", "similarity", "models", "guidance", "pipelines", "methods", "generation", "labels",
          "evaluation", "candidates", "audits", "training", "workflows", "cli"]


def test_no_package_imports_from_a_higher_layer():
    files = python_files("diffusers_side")
    known = {module_name(p) for p in files}
    upward = []
    for path in files:
        source = module_name(path).split(".")
        if len(source) < 3:
            continue
        for target in module_imports(path, known):
            parts = target.split(".")
            if len(parts) > 1 and parts[1] in LAYERS and LAYERS.index(parts[1]) > LAYERS.index(source[1]):
                upward.append(f"{module_name(path)} -> {target}")
    assert set(LAYERS) == {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}, "a package missing from LAYERS"
    assert not upward, f"imports from a higher layer: {upward}"


@pytest.mark.parametrize(
    "graph, expected",
    [({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]), ({"a": {"b"}, "b": set()}, [])],
)
def test_the_circle_finder_finds_circles(graph, expected):
    assert import_cycles(graph) == expected
