"""The package layout (docs/design.md#module-layout): no import cycle inside
zramd/, and the engine never imports an outer room.  Reads the sources'
import statements (module level and inside functions) with ast."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "zramd"
LEAVES = {"zramd.units", "zramd.libc", "zramd.nodump", "zramd.safeopen"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The zramd modules ``path`` imports (``from . import x`` counts x)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in modules)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            for a in node.names:
                if f"{target}.{a.name}" in modules:
                    out.add(f"{target}.{a.name}")
                elif target in modules:
                    out.add(target)
    out.discard(name)
    return out


def graph() -> dict[str, set[str]]:
    paths = sorted(ROOT.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    return {module_name(p): imports_of(p, modules) for p in paths}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt.endswith("__init__") or nxt in ("zramd", "zramd.engine"):
                continue  # a package's own docstring module imports nothing
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_cycle_inside_zramd():
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_sees_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("name", sorted(n for n in graph() if n.startswith("zramd.engine")))
def test_engine_imports_only_engine_and_leaves(name):
    outer = {m for m in graph()[name] if not m.startswith("zramd.engine") and m not in LEAVES}
    assert not outer, f"{name} imports outer rooms {sorted(outer)}"


HOT_PATH = {("store.py", "write")}  # PageStore.write: arena.py, "Fast-path interface"


def test_functions_fit_on_a_screen():
    """zramd/, the plugin, the bench and the VM harness: no function over 80
    lines but the one documented hot path."""
    long = []
    top = ROOT.parent
    paths = [*ROOT.rglob("*.py"), *(top / "plugin").glob("*.py"), *(top / "bench").glob("*.py"),
             *(top / "vm").glob("*.py")]
    for path in sorted(paths):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > 80 and (path.name, node.name) not in HOT_PATH:
                    long.append(f"{path.name}:{node.name} ({lines} lines)")
    assert not long, "functions over 80 lines: " + ", ".join(long)


def test_test_module_names_are_unique():
    # pytest imports test modules by basename (no packages under tests/):
    # two files of one name make it refuse to collect the whole suite
    tests = ROOT.parent / "tests"
    seen: dict[str, Path] = {}
    for path in sorted(tests.rglob("test_*.py")):
        assert path.name not in seen, f"{path} and {seen[path.name]} share a name"
        seen[path.name] = path
