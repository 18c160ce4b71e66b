"""The package's layers point down, and no module imports itself back through others.

Every module's imports of babysit modules are read with ``ast`` (at module level, inside
functions and under ``TYPE_CHECKING`` alike: an import that runs late is still a dependency).
Importing ``babysit.a.b`` also runs ``babysit/a/__init__.py``: so an import of a module from
outside its package counts as an import of the package too.
The layers, lowest first (DESIGN.md, "Layers"):

    errors, config, rundir        the spec and the run directory's files
    data, nets, optim             know nothing of training
    train, checks, landscape's    generic: no model kind (the Hessian-vector products,
      numerics                    Lanczos, the spectrum, surfaces: pure numerics, which
                                  the sharpness check runs during training)
    families                      all kind-specific knowledge
    report                        the page every finished run ends with
    run                           one run path for every family
    landscape.run / .figures,     work on runs
      tune, studies
    cli, babysit (the package)    entry points

A module may import its own layer and the ones below it, never one above; and the import
graph has no cycle. A failure lists each offending import with its file and line.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "babysit"
LAYERS: list[tuple[str, ...]] = [
    ("babysit.errors", "babysit.config", "babysit.rundir"),
    ("babysit.data", "babysit.nets", "babysit.optim"),
    # babysit.landscape's numerics import only errors and nets (the package's __init__ too):
    # the sharpness check's callback tracks lambda_max with them during training
    ("babysit.train", "babysit.checks", "babysit.landscape"),
    ("babysit.families",),
    ("babysit.report",),
    ("babysit.run", "babysit.lightning"),  # the Lightning callback keeps a run directory (run.watch)
    ("babysit.landscape.run", "babysit.landscape.figures", "babysit.tune", "babysit.studies"),
    ("babysit.cli", "babysit.__main__", "babysit"),
]
# function-local imports of babysit modules that keep `babysit --help` and `import babysit`
# from importing torch: the CLI's commands and the package's lazy entry points
LAZY_ENTRY_POINTS = ("babysit.cli", "babysit")


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def layer_of(module: str) -> int:
    best, depth = None, -1
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and prefix.count(".") > depth:
                best, depth = index, prefix.count(".")
    assert best is not None, f"{module}: in no layer; add it to LAYERS"
    return best


def imports(known: dict[str, Path]) -> list[tuple[str, str, int, bool]]:
    """(importer, imported module, line, inside a function) for every import of a babysit module."""
    found = []
    for module, path in known.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        is_package = path.name == "__init__.py"
        local = {id(node) for func in ast.walk(tree) if isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef)
                 for node in ast.walk(func) if node is not func}
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = module.split(".") if is_package else module.split(".")[:-1]
                    anchor = anchor[: len(anchor) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                # `from babysit.x import y` imports the module babysit.x.y when there is one
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
            for target in targets:
                while target not in known and "." in target:  # babysit.x.name -> babysit.x
                    target = target.rsplit(".", 1)[0]
                if target in known and target != module:
                    found.append((module, target, node.lineno, id(node) in local))
                    found += [(module, package, node.lineno, id(node) in local) for package in packages_run(module, target, known)]
    return found


def packages_run(importer: str, target: str, known: dict[str, Path]) -> list[str]:
    """The packages whose ``__init__`` importing ``target`` runs, below ``babysit`` and not
    already running in ``importer`` (a module inside a package finds it initialised)."""
    parts = target.split(".")
    packages = [".".join(parts[:i]) for i in range(2, len(parts))]
    return [p for p in packages if p in known and not (importer == p or importer.startswith(p + "."))]


def cycles(edges: list[tuple[str, str, int, bool]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    graph: dict[str, set[str]] = defaultdict(set)
    for source, target, _, _ in edges:
        graph[source].add(target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
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
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


KNOWN = modules()
EDGES = imports(KNOWN)


def where(module: str, line: int) -> str:
    return f"{KNOWN[module].relative_to(PACKAGE.parent.parent)}:{line}"


def test_every_module_has_a_layer():
    for module in KNOWN:
        layer_of(module)


def test_no_module_imports_a_layer_above_its_own():
    upward = [f"{where(s, line)}: {s} (layer {layer_of(s)}) imports {t} (layer {layer_of(t)})"
              for s, t, line, _ in EDGES if layer_of(t) > layer_of(s)]
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_there_is_no_import_cycle():
    found = cycles(EDGES)
    detail = [f"{' -> '.join(c)}: " + ", ".join(f"{where(s, line)} imports {t}" for s, t, line, _ in EDGES
                                               if s in c and t in c) for c in found]
    assert not found, "import cycles:\n" + "\n".join(detail)


def test_only_the_entry_points_import_babysit_inside_functions():
    hidden = [f"{where(s, line)}: {s} imports {t} inside a function"
              for s, t, line, local in EDGES if local and s not in LAZY_ENTRY_POINTS]
    assert not hidden, "function-local imports:\n" + "\n".join(hidden)


def test_the_checker_sees_an_upward_import_and_a_cycle():
    """The checks above can fail: a made-up upward edge and a made-up cycle are reported."""
    fake = [("babysit.data.sources", "babysit.run.runner", 1, False),
            ("babysit.nets.mlp", "babysit.nets.layers", 1, False), ("babysit.nets.layers", "babysit.nets.mlp", 2, True)]
    assert layer_of("babysit.run.runner") > layer_of("babysit.data.sources")
    assert cycles(fake) == [["babysit.nets.layers", "babysit.nets.mlp"]]
    # importing a module runs its packages' __init__: an edge to each, from outside them only
    assert packages_run("babysit.train.loop", "babysit.landscape.hvp", KNOWN) == ["babysit.landscape"]
    assert packages_run("babysit.landscape.spectrum", "babysit.landscape.hvp", KNOWN) == []
    assert layer_of("babysit.landscape.run") > layer_of("babysit.run.runner") > layer_of("babysit.landscape.hvp")
