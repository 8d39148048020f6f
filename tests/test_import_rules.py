"""Imports point one way (DESIGN.md §2) and never in a circle.

Every .py under the four packages is parsed with `ast`, imports inside functions included,
because a lazy import is still a dependency: it only fails later, on the code path that needs it.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "exporters", "runtimes", "calibration")


@dataclass(frozen=True)
class Edge:
    src: str
    dst: str
    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.src} -> {self.dst} ({self.file}:{self.line})"


def module_files(root: Path, packages=PACKAGES) -> dict[str, Path]:
    """Dotted module name -> file, for every .py under the packages (a package is its __init__)."""
    out = {}
    for pkg in packages:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _resolve(name: str, known: set[str]) -> str | None:
    """The longest known module that `name` is or lies inside; None outside the packages."""
    parts = name.split(".")
    while parts:
        if ".".join(parts) in known:
            return ".".join(parts)
        parts.pop()
    return None


def imports_of(module: str, path: Path, known: set[str], root: Path) -> list[Edge]:
    """The project modules `module` imports. `import a.b.c` is an edge to a.b.c alone (not to a or
    a.b); `from a.b import c` is an edge to a.b.c when c is a module, else to a.b."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    rel = str(path.relative_to(root))
    edges = []
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for a in node.names:
                sub = f"{base}.{a.name}" if base else a.name
                targets.append(sub if sub in known else base)
        for target in targets:
            dst = _resolve(target, known)
            edge = Edge(module, dst, rel, node.lineno)
            if dst is not None and dst != module and edge not in edges:
                edges.append(edge)
    return edges


def stage_modules(files: dict[str, Path]) -> set[str]:
    """Modules under pipeline/stages/ that define a module-level STAGE."""
    out = set()
    for name, path in files.items():
        if name.startswith("pipeline.stages."):
            tree = ast.parse(path.read_text())
            if any(isinstance(n, (ast.Assign, ast.AnnAssign)) and any(
                    isinstance(t, ast.Name) and t.id == "STAGE"
                    for t in (n.targets if isinstance(n, ast.Assign) else [n.target])) for n in tree.body):
                out.add(name)
    return out


# What is made of stage outputs (measured, reported, rendered, gated, compared) never runs a stage.
RESULT_PACKAGES = ("measure", "report", "render", "gate", "compare")


def _inside(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def forbidden(edge: Edge, stages: set[str]) -> str | None:
    """Why `edge` points the wrong way, or None when it is allowed."""
    s, d = edge.src, edge.dst
    if (_inside(s, "runtimes") or _inside(s, "calibration")) and (_inside(d, "pipeline") or _inside(d, "exporters")):
        return "runtimes and calibration import neither pipeline nor exporters"
    if _inside(s, "exporters") and _inside(d, "pipeline"):
        return "exporters do not import pipeline"
    if s in stages and d in stages:
        return "stage modules do not import each other (shared code belongs in pipeline/train, models, ...)"
    if any(_inside(s, f"pipeline.{p}") for p in RESULT_PACKAGES) and _inside(d, "pipeline.stages"):
        return f"pipeline/{s.split('.')[1]} does not import pipeline/stages"
    if _inside(s, "pipeline.models") and _inside(d, "pipeline.prune"):
        return "pipeline/models does not import pipeline/prune"
    return None


def find_cycles(edges: list[Edge]) -> list[list[Edge]]:
    """One cycle per strongly connected component of more than one module, as its edges in order."""
    graph: dict[str, dict[str, Edge]] = {}
    for e in edges:
        graph.setdefault(e.src, {}).setdefault(e.dst, e)
    index, low, on_stack, stack, components = {}, {}, set(), [], []

    def connect(v: str) -> None:        # Tarjan; graphs here are a few hundred modules deep at most
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            connect(v)
    cycles = []
    for component in components:
        start = min(component)
        path, seen = [start], {start}
        # Walk inside the component until a module repeats: that closes a cycle.
        while True:
            nxt = min(w for w in graph[path[-1]] if w in component)
            if nxt in seen:
                path = path[path.index(nxt):] + [nxt]
                break
            path.append(nxt)
            seen.add(nxt)
        cycles.append([graph[a][b] for a, b in zip(path, path[1:])])
    return cycles


def check(root: Path, packages=PACKAGES) -> tuple[list[list[Edge]], list[tuple[Edge, str]]]:
    """(cycles, forbidden imports with the rule each breaks) of the packages under `root`."""
    files = module_files(root, packages)
    known = set(files)
    edges = [e for name, path in files.items() for e in imports_of(name, path, known, root)]
    stages = stage_modules(files)
    bad = [(e, why) for e in edges if (why := forbidden(e, stages))]
    return find_cycles(edges), bad


def test_no_import_cycles():
    cycles, _ = check(ROOT)
    assert not cycles, "import cycles:\n" + "\n\n".join("\n".join(f"  {e}" for e in c) for c in cycles)


def test_imports_point_the_way_design_md_says():
    _, bad = check(ROOT)
    assert not bad, "imports against DESIGN.md §2:\n" + "\n".join(f"  {e}   [{why}]" for e, why in bad)


def test_the_checker_sees_every_kind_of_import():
    files = module_files(ROOT)
    assert len(files) > 80 and "pipeline.stages.prune" in files and "runtimes" in files
    edges = {(e.src, e.dst) for name, path in files.items() for e in imports_of(name, path, set(files), ROOT)}
    assert ("pipeline.stages.prune", "pipeline.prune.structured") in edges    # inside a function
    assert ("pipeline.runner", "pipeline.stages") in edges                   # from a package import a name
    assert {"pipeline.stages.finetune", "pipeline.stages.check"} <= stage_modules(files)
    assert "pipeline.stages.base" not in stage_modules(files)


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_checker_finds_a_cycle_and_forbidden_imports(tmp_path):
    _write(tmp_path, {
        "pipeline/__init__.py": "",
        "pipeline/a.py": "def f():\n    from . import b\n",                  # relative, in a function
        "pipeline/b.py": "import pipeline.c\n",
        "pipeline/c.py": "from pipeline import a\n",                         # a submodule by name
        "pipeline/stages/__init__.py": "from pipeline.stages import one, two\n",   # no cycle: no parents
        "pipeline/stages/one.py": "from pipeline.stages.two import STAGE as OTHER\nSTAGE = 1\n",
        "pipeline/stages/two.py": "STAGE = 2\n",
        "pipeline/measure/__init__.py": "",
        "pipeline/measure/rows.py": "import os\n\n\ndef g():\n    import pipeline.stages.two\n",
        "pipeline/models/__init__.py": "from pipeline.prune.x import y\n",
        "pipeline/prune/__init__.py": "",
        "pipeline/prune/x.py": "y = 1\n",
        "exporters/__init__.py": "import runtimes\nimport pipeline.a\n",
        "runtimes/__init__.py": "from calibration import thing\n",
        "calibration/__init__.py": "thing = 1\nfrom exporters import q\n",
    })
    cycles, bad = check(tmp_path)
    shown = [[str(e) for e in c] for c in cycles]
    assert ["pipeline.a -> pipeline.b (pipeline/a.py:2)", "pipeline.b -> pipeline.c (pipeline/b.py:1)",
            "pipeline.c -> pipeline.a (pipeline/c.py:1)"] in shown
    assert any("calibration -> exporters" in e for c in shown for e in c)    # exporters->runtimes->calibration
    assert len(cycles) == 2
    assert sorted(str(e) for e, _ in bad) == [
        "calibration -> exporters (calibration/__init__.py:2)",
        "exporters -> pipeline.a (exporters/__init__.py:2)",
        "pipeline.measure.rows -> pipeline.stages.two (pipeline/measure/rows.py:5)",
        "pipeline.models -> pipeline.prune.x (pipeline/models/__init__.py:1)",
        "pipeline.stages.one -> pipeline.stages.two (pipeline/stages/one.py:1)",
    ]


def test_every_package_is_listed_in_pyproject():
    """A package missing from [tool.setuptools] packages works in a checkout and breaks when installed."""
    import tomllib
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts)
             for top in ("pipeline", "exporters", "runtimes", "calibration")
             for p in (ROOT / top).rglob("__init__.py")}
    assert found == listed, f"not listed: {sorted(found - listed)}; listed but absent: {sorted(listed - found)}"
