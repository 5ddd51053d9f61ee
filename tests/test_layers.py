"""The house rules (docs/architecture.md): each folder is one layer, imports point only down, no cycles.

The graph is read from the source with `ast`, so imports inside functions count as much as those at
the top of a module. An import of a package counts as an import of its __init__ module, an import of
a name from a module as an import of that module.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("app", "eval", "recon", "fields", "tokens")

# Who may import whom: a layer may import itself and the layers listed for it, nothing else. Read
# top-down, each row may only name rows below it (checked in test_layer_table_points_down).
LAYERS: dict[str, set[str]] = {
    "run": {"app"},                                             # run.py: argument parsing and dispatch
    "app": {"eval", "recon.export", "recon.postfit", "recon.train", "recon.model", "recon.data", "recon.core",
            "fields", "tokens"},
    "recon.export": {"recon.data", "recon.core"},
    "recon.postfit": {"recon.train", "recon.model", "recon.data", "recon.core", "fields", "tokens"},
    "recon.train": {"recon.model", "recon.data", "recon.core", "fields", "tokens"},
    "eval": {"recon.data", "recon.core"},
    "recon.model": {"recon.data", "recon.core", "fields", "tokens"},
    "recon.data": {"recon.core"},
    "recon.core": {"tokens", "fields"},                         # the settings hold the adjustment / densify rules
    "tokens": {"fields"},
    "fields": set(),
}
ORDER = list(LAYERS)


def module_files() -> dict[str, Path]:
    out = {"run": ROOT / "run.py"}
    for pkg in PACKAGES:
        for p in (ROOT / pkg).rglob("*.py"):
            name = ".".join(p.relative_to(ROOT).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = p
    return out


def _resolve(name: str, mods: dict[str, Path]) -> str | None:
    while name:
        if name in mods:
            return name
        name = name.rpartition(".")[0]
    return None


def import_graph(mods: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the project modules it imports (anywhere in its source)."""
    graph: dict[str, set[str]] = {}
    for mod, path in mods.items():
        pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                    base = ".".join(parts + ([base] if base else []))
                names = [f"{base}.{a.name}" for a in node.names] + [base]
            for n in names:
                r = _resolve(n, mods)
                if r is not None and r != mod:
                    targets.add(r)
        graph[mod] = targets
    return graph


def layer_of(mod: str) -> str:
    if mod == "recon":                     # the bare package (an empty __init__) sits with its lowest layer
        return "recon.core"
    best = max((lay for lay in LAYERS if mod == lay or mod.startswith(lay + ".")), key=len, default=None)
    assert best is not None, f"{mod} is in no layer of tests/test_layers.py LAYERS; add it there and to docs/architecture.md"
    return best


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm: the components with more than one module (each one an import cycle)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(module_files())


def test_no_import_cycle(graph):
    assert strongly_connected(graph) == []


def test_imports_point_down(graph):
    bad = []
    for mod, targets in graph.items():
        lay = layer_of(mod)
        for t in sorted(targets):
            tl = layer_of(t)
            if tl != lay and tl not in LAYERS[lay]:
                bad.append(f"{mod} ({lay}) imports {t} ({tl})")
    assert bad == [], "imports that break the layering:\n" + "\n".join(bad)


def test_layer_table_points_down():
    for i, lay in enumerate(ORDER):
        above = set(ORDER[: i + 1])
        assert not (LAYERS[lay] & above), f"{lay} may import {LAYERS[lay] & above}, which is not below it"


def test_checker_sees_function_level_imports_and_cycles(tmp_path):
    """The checker itself: an import inside a function is an edge, a relative import resolves, and a
    two-module cycle is found."""
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "a.py").write_text("def f():\n    from pkg.b import g\n    return g\n")
    (tmp_path / "pkg" / "b.py").write_text("from . import a\n\ndef g():\n    return a\n")
    mods = {"pkg": tmp_path / "pkg" / "__init__.py", "pkg.a": tmp_path / "pkg" / "a.py",
            "pkg.b": tmp_path / "pkg" / "b.py"}
    g = import_graph(mods)
    assert g["pkg.a"] == {"pkg.b"} and g["pkg.b"] == {"pkg", "pkg.a"}
    assert strongly_connected(g) == [["pkg.a", "pkg.b"]]


def test_no_path_outside_the_repository():
    """No file a user gets names the development machine's shared folder or an absolute /work path."""
    bad = []
    for p in ROOT.rglob("*"):
        if not p.is_file() or p.suffix not in (".py", ".md", ".yaml", ".yml", ".sh", ".toml", ".txt", ".cfg"):
            continue
        rel = p.relative_to(ROOT)
        if rel.parts[0].startswith(".") or rel.parts[0] in ("runs",) or "site-packages" in rel.parts:
            continue
        text = p.read_text(errors="replace")
        for needle in ("../" + "shared", "/" + "work/"):
            if needle in text:
                bad.append(f"{rel}: {needle}")
    assert bad == []
