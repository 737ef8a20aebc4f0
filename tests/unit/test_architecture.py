"""The shape of the code, held by tests: import direction, no circles, units small enough to
hold in the head. Read from the source (AST), nothing is imported."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOP = ("eventpost", "services", "gateway", "email_sender")
MAX_FUNCTION_LINES = 80
MAX_CLASS_LINES = 300


def _modules() -> dict[str, Path]:
    found = {}
    for top in TOP:
        for path in sorted((ROOT / top).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _resolve(module: str, level: int, name: str | None, is_package: bool) -> str:
    if level == 0:
        return name or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, name] if name else base)


def _imports(module: str, path: Path) -> Iterator[tuple[str, bool]]:
    """Project modules that ``module`` imports, with whether the import is at run time
    (outside ``if TYPE_CHECKING``)."""
    tree = ast.parse(path.read_text())
    is_package = path.name == "__init__.py"
    type_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for inner in ast.walk(node):
                type_only.add(id(inner))
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, node.level, node.module, is_package)
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != module:
                yield target, id(node) not in type_only


def _graph() -> dict[str, set[str]]:
    """Every run-time import between project modules, at module level or inside functions
    (an import moved into a function to dodge a circle is still a circle)."""
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for module, path in MODULES.items():
        graph[module] = {target for target, runtime in _imports(module, path) if runtime}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def _package_of(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "services" else parts[0]


def test_no_import_circle_between_modules():
    assert _cycle(_graph()) is None


def test_the_cycle_finder_finds_one():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_import_direction():
    """The toolkit imports no deployable; services never import each other; the gateway and
    the email-sender import no service; the storage port imports no adapter."""
    for module, targets in _graph().items():
        for target in targets:
            src, dst = _package_of(module), _package_of(target)
            if src == "eventpost":
                assert dst == "eventpost", f"{module} imports {target}"
            if src.startswith("services.") and dst.startswith("services."):
                assert src == dst, f"{module} imports {target}"
            if src in ("gateway", "email_sender"):
                assert not dst.startswith("services"), f"{module} imports {target}"
    port = _graph()["eventpost.storage.port"]
    assert not {
        t for t in port if t.startswith(("eventpost.storage.sqlite", "eventpost.storage.mongo"))
    }


def _units() -> Iterator[tuple[str, str, int, int]]:
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                yield (
                    module,
                    node.name,
                    node.end_lineno - node.lineno + 1,
                    isinstance(node, ast.ClassDef),
                )


@pytest.mark.parametrize("kind", ["function", "class"])
def test_units_are_small_enough_to_hold_in_the_head(kind):
    limit = MAX_CLASS_LINES if kind == "class" else MAX_FUNCTION_LINES
    too_big = [
        f"{module}.{name}: {size} lines"
        for module, name, size, is_class in _units()
        if is_class == (kind == "class") and size > limit
    ]
    assert not too_big, f"over {limit} lines: {too_big}"
