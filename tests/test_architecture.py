"""The structure docs/layout.md promises: no import cycle in the core, one owner of the run folder,
first-party plugins on the public API only, a core that never imports the environments package. Imports inside
functions count as much as those at the top."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "worldsim"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports, anywhere in the file (``from a.b import c`` counts as a.b and a.b.c)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def core_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in CORE.rglob("*.py")}
    return {name: {m for m in imports_of(path) if m in modules and m != name} for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules, or None (depth-first search, package __init__ edges skipped:
    importing a.b runs a's __init__, which is not a dependency of a.b's code)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if node.startswith(dep + "."):  # a module importing its own package
                continue
            if state.get(dep) == 1:
                return stack[stack.index(dep) :] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle_between_core_modules():
    cycle = find_cycle(core_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_first_party_plugins_use_only_the_public_api():
    public = {"worldsim", "worldsim.errors", "worldsim.nn", "worldsim.video", "worldsim.checkpoint", "worldsim.runs",
              "worldsim.data", "worldsim.data.normalizers"}  # fmt: skip
    for path in (ROOT / "plugins").glob("*.py"):
        tree = ast.parse(path.read_text())
        used = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        used |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        private = {m for m in used if m.split(".")[0] == "worldsim" and m not in public}
        assert not private, f"{path.name} imports {sorted(private)}: not part of worldsim's public API"


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the docstring constants of a module, its classes and functions."""
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    return {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, kinds) and node.body and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant) and isinstance(node.body[0].value.value, str)
    }  # fmt: skip


def test_the_core_never_imports_the_environments_package():
    """Environments reach worldsim through plugins (tasks, data sets, video tasks), which import worldsim_envs
    themselves: no module of worldsim/ imports it, at the top, inside a function, or by name (importlib)."""
    for path in CORE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        imported = {m for m in imports_of(path) if m.split(".")[0] == "worldsim_envs"}
        assert not imported, f"{path.relative_to(ROOT)} imports {sorted(imported)}"
        docs = _docstrings(tree)
        named = [
            node.lineno
            for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and "worldsim_envs" in node.value
            and id(node) not in docs
        ]  # fmt: skip
        assert not named, f"{path.relative_to(ROOT)} names worldsim_envs in code at lines {named}"
