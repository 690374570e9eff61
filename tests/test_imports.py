"""No import cycle among the modules of `imc` and `tuning`, local (function-level) imports included.

The module graph is read from the source files (nothing is imported): every `import` and
`from ... import` statement anywhere in a file, relative imports resolved, restricted to the
modules of the packages. A local import that only hides a cycle from Python's import system is
still a cycle here.
"""

from __future__ import annotations

import ast
import pkgutil
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("imc", "tuning")


def package_modules(root: Path, packages: tuple[str, ...]) -> dict[str, tuple[Path, bool]]:
    """Module name -> (source file, is a package) for every module of `packages` under `root`
    (sub-packages included; folders without `__init__.py` are not packages and are left out)."""
    out: dict[str, tuple[Path, bool]] = {}

    def walk(folder: Path, name: str) -> None:
        out[name] = (folder / "__init__.py", True)
        for info in pkgutil.iter_modules([str(folder)]):
            if info.ispkg:
                walk(folder / info.name, f"{name}.{info.name}")
            else:
                out[f"{name}.{info.name}"] = (folder / f"{info.name}.py", False)

    for pkg in packages:
        walk(root / pkg, pkg)
    return out


def _resolve(module: str | None, level: int, name: str, is_package: bool) -> str:
    """The absolute module of `from <level dots><module> import ...` in module `name`."""
    if level == 0:
        return module or ""
    parts = name.split(".") if is_package else name.split(".")[:-1]
    if level - 1 > len(parts) - 1:
        raise ImportError(f"{name}: relative import beyond the top-level package")
    base = parts[: len(parts) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def _known(target: str, modules: dict) -> str | None:
    """`target` or its longest prefix that is a module of the graph (None: outside it)."""
    parts = target.split(".")
    for n in range(len(parts), 0, -1):
        candidate = ".".join(parts[:n])
        if candidate in modules:
            return candidate
    return None


def imports_of(name: str, path: Path, is_package: bool, modules: dict) -> set[str]:
    """Modules of `modules` that `name` imports, by any import statement of its source."""
    tree = ast.parse(path.read_text(), filename=str(path))
    targets: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(node.module, node.level, name, is_package)
            for alias in node.names:  # `from pkg import mod` imports the module pkg.mod
                sub = f"{base}.{alias.name}" if base else alias.name
                targets.append(sub if sub in modules else base)
    found = {_known(t, modules) for t in targets if t}
    return {t for t in found if t is not None and t != name}


def import_graph(root: Path, packages: tuple[str, ...]) -> dict[str, set[str]]:
    """Module -> the modules of the packages it imports."""
    modules = package_modules(root, packages)
    return {
        name: imports_of(name, path, is_pkg, modules) for name, (path, is_pkg) in modules.items()
    }


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module, as a path that
    returns to its start (`[a, b, a]`), components and paths in sorted order (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            components.append(comp)

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return sorted(_cycle_in(graph, comp) for comp in components if len(comp) > 1)


def _cycle_in(graph: dict[str, set[str]], comp: set[str]) -> list[str]:
    """A shortest cycle through the smallest module of a strongly connected component."""
    start = min(comp)
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:  # breadth-first inside the component, back to `start`
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & comp):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return [*reversed(path), start]
                if w not in parent:
                    parent[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"{sorted(comp)} is not strongly connected")


def _describe(cycles: list[list[str]]) -> str:
    return "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


# ----------------------------------------------------------------- the packages


def test_no_import_cycle_in_imc_and_tuning():
    graph = import_graph(REPO, PACKAGES)
    cycles = find_cycles(graph)
    assert not cycles, _describe(cycles)


def test_the_graph_holds_local_and_relative_imports():
    graph = import_graph(REPO, PACKAGES)
    assert {"imc.cli", "imc.metrics", "tuning.cli", "tuning.space"} <= set(graph)
    assert "imc.errors" in graph["imc.cli"]  # `from .errors import ImcError`: relative
    assert "imc.pipeline" in graph["imc.cli"]  # `from . import ... pipeline` inside cmd_run
    assert "imc.cli_args" in graph["tuning.cli"]  # absolute, across the packages
    assert "imc.demo" in graph["imc.cli"]  # `from .demo import ...` inside an if, in a function
    assert "tuning.objective" in graph["tuning.cli"]  # `from .objective import ...` inside run


# ----------------------------------------------------------------- the checker itself


def test_find_cycles_on_a_hand_made_graph():
    acyclic = {"a": {"b", "c"}, "b": {"c"}, "c": set(), "d": {"a"}}
    assert find_cycles(acyclic) == []
    graph = {**acyclic, "c": {"e"}, "e": {"b"}, "f": {"g"}, "g": {"f"}}
    assert find_cycles(graph) == [["b", "c", "e", "b"], ["f", "g", "f"]]
    assert "b -> c -> e -> b" in _describe(find_cycles(graph))


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_a_cycle_hidden_in_a_function_is_found(tmp_path):
    """pkg.sub.b imports pkg.a only inside a function, with a two-dot relative import."""
    _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "from .sub import b\n",
            "pkg/sub/__init__.py": "",
            "pkg/sub/b.py": "import os\n\n\ndef f():\n    from ..a import g\n\n    return g\n",
            "pkg/c.py": "import pkg.a\nfrom pkg.sub.b import f\n",
            "pkg/d.py": "class K:\n    def m(self):\n        from .sub import b\n",
            "pkg/templates/run.py": "import pkg.c\n",  # no __init__.py: not a module
        },
    )
    graph = import_graph(tmp_path, ("pkg",))
    assert set(graph) == {"pkg", "pkg.a", "pkg.c", "pkg.d", "pkg.sub", "pkg.sub.b"}
    assert graph["pkg.sub.b"] == {"pkg.a"}
    assert graph["pkg.d"] == {"pkg.sub.b"}  # inside a method of a class
    assert graph["pkg.c"] == {"pkg.a", "pkg.sub.b"}
    assert find_cycles(graph) == [["pkg.a", "pkg.sub.b", "pkg.a"]]

    (tmp_path / "pkg/sub/b.py").write_text("import os\n")  # the cycle broken
    assert find_cycles(import_graph(tmp_path, ("pkg",))) == []


def test_a_cycle_across_two_packages_is_found(tmp_path):
    _write(
        tmp_path,
        {
            "one/__init__.py": "",
            "one/cli.py": "from two import cli as two_cli\n",
            "two/__init__.py": "",
            "two/cli.py": "def add(p):\n    from one.cli import main\n",
        },
    )
    cycles = find_cycles(import_graph(tmp_path, ("one", "two")))
    assert cycles == [["one.cli", "two.cli", "one.cli"]]
