"""The package's shape: no import cycles (lazy imports included), no oversized module, the README's
Python blocks run as written, ``python -m meanode`` works."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "python" / "meanode"
#: the largest module allowed, in lines (one concern per file)
MAX_MODULE_LINES = 700


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PKG.rglob("*.py")}


def _resolve(current: str, is_pkg: bool, level: int, module: str | None) -> str:
    base = current.split(".") if is_pkg else current.split(".")[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def import_graph() -> dict[str, set[str]]:
    """module -> the meanode modules it imports, anywhere in its body (lazy imports count: they are
    how a cycle hides). ``from X import name`` adds X.name when that is a module, else X."""
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(name, is_pkg, node.level, node.module) if node.level else (node.module or "")
                subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in mods]
                targets = subs if len(subs) == len(node.names) else [base] + subs
            for t in targets:
                if t in mods and t != name:
                    graph[name].add(t)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
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

    sys.setrecursionlimit(10_000)
    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_import_graph_has_no_cycles():
    graph = import_graph()
    assert "meanode.sweep.driver" in graph and "meanode.limit.api" in graph  # the parser sees the package
    assert "meanode.limit.quadrature" in graph["meanode.limit.adapt"]  # and lazy/relative imports
    assert _cycles(graph) == []


def test_the_cycle_detector_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_is_oversized():
    sizes = {name: len(p.read_text().splitlines()) for name, p in _modules().items()}
    big = {m: n for m, n in sizes.items() if n > MAX_MODULE_LINES}
    assert not big, big


def _readme_blocks() -> list[tuple[str, str | None]]:
    """(code, reason not run) for every ```python block of the README; a block is skipped only when
    the line before it is ``<!-- not run here: REASON -->``."""
    text = (ROOT / "README.md").read_text()
    out = []
    for m in re.finditer(r"(?:<!-- not run here: (?P<why>[^>]*?) -->\n)?```python\n(?P<code>.*?)```", text, re.S):
        out.append((m.group("code"), m.group("why")))
    return out


def test_readme_python_blocks_run_as_written(tmp_path, monkeypatch):
    blocks = _readme_blocks()
    assert len(blocks) >= 3
    monkeypatch.chdir(ROOT)  # the blocks name files of the checkout (examples/...)
    monkeypatch.setenv("MEANODE_README_TEST_OUT", str(tmp_path))
    namespace: dict = {"__name__": "__main__"}
    ran = 0
    for code, why in blocks:
        if why:
            assert len(why.strip()) > 10  # a stated reason, not a blank mark
            continue
        exec(compile(code.replace("runs/", f"{tmp_path}/runs/"), "README.md", "exec"), namespace)  # noqa: S102
        ran += 1
    assert ran >= 3


def test_python_m_meanode_runs_the_cli():
    out = subprocess.run([sys.executable, "-m", "meanode", "doctor"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "scipy" in out.stdout and "torch" in out.stdout and "julia" in out.stdout


@pytest.mark.parametrize("module", ["meanode", "meanode.sweep", "meanode.limit"])
def test_public_names_exist(module):
    mod = __import__(module, fromlist=["__all__"])
    missing = [n for n in mod.__all__ if not hasattr(mod, n)]
    assert not missing, missing
