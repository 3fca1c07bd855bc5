"""The package's import graph has no cycle, not even one hidden in a function-level import."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "autoprune"


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """Every autoprune module ``path`` imports, at module level or inside a function."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("autoprune"):
            named = {f"{node.module}.{a.name}" for a in node.names} & set(known)
            out |= named or {node.module}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("autoprune")}
    return out & set(known)


def test_no_import_cycles():
    known = modules()
    # a module's own packages run before it in any case: not a dependency
    graph = {m: {d for d in imports(p, known) if not m.startswith(d + ".") and d != m} for m, p in known.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(d):] + [d]))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_the_config_imports_no_searcher():
    assert not any(d.startswith("autoprune.searching.searchers") for d in imports(PACKAGE / "config.py", modules()))
