"""The structure ARCHITECTURE.md describes, kept by tests that read the code (no imports run).

* Layers, each importing only from itself and below:
  the storage/run layer (``curation.errors``, ``curation.storage``, ``curation.settings``,
  ``curation.rundir``) -> the algorithms (``curation``, ``metadata``) -> the Spark jobs
  (``jobs`` without its CLI), ``training`` and ``eval`` side by side (``eval`` may use ``training``)
  -> the command line (``jobs.cli``, ``jobs.commands``).
* No two modules import each other, directly or around a longer loop.
* The stage registry is the one list of stages: outside ``jobs/stages/`` no code writes stage
  names out as a list, compares a name with a stage name, or asks a run for a stage by a literal.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("curation", "metadata", "jobs", "training", "eval")
BOTTOM = {"curation.errors", "curation.storage", "curation.settings", "curation.rundir"}


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for f in sorted((REPO / pkg).rglob("*.py")):
            parts = f.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = f
    return out


def _imports(path: Path) -> set[str]:
    """Every project module an file imports (at the top or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return {n for n in found if n.split(".")[0] in PACKAGES}


def _layer(module: str) -> str:
    if module in BOTTOM or any(module.startswith(b + ".") for b in BOTTOM):
        return "bottom"
    if module == "jobs.cli" or module.startswith(("jobs.cli.", "jobs.commands")):
        return "cli"
    return module.split(".")[0]


ALLOWED = {
    "bottom": {"bottom"},
    "curation": {"bottom", "curation"},
    "metadata": {"bottom", "curation", "metadata"},
    "jobs": {"bottom", "curation", "metadata", "jobs"},
    "training": {"bottom", "curation", "training"},
    "eval": {"bottom", "curation", "training", "eval"},
    "cli": {"bottom", "curation", "metadata", "jobs", "training", "eval", "cli"},
}


def _violations() -> list[str]:
    modules = _modules()
    bad = []
    for name, path in modules.items():
        src = _layer(name)
        for target in sorted(_imports(path)):
            # "from curation import storage" names the module curation.storage
            dst = _layer(target if target in modules or "." not in target else
                         (target if target.rsplit(".", 1)[0] not in modules else target.rsplit(".", 1)[0]))
            if dst not in ALLOWED[src]:
                bad.append(f"{path.relative_to(REPO)} ({src}) imports {target} ({dst})")
    return bad


def test_no_import_runs_back_up_the_layers():
    assert _violations() == []


def test_the_layer_check_catches_a_back_up_import(tmp_path, monkeypatch):
    """The check is not vacuous: an eval module importing jobs, or the bottom importing an
    algorithm, is reported."""
    fake = tmp_path / "eval_fake.py"
    fake.write_text("from jobs.stages import dedup\n")
    assert _layer("eval.fake") == "eval" and "jobs" not in ALLOWED["eval"]
    assert {_layer(t) for t in _imports(fake)} == {"jobs"}
    assert "curation" not in ALLOWED["bottom"] and _layer("curation.storage") == "bottom"


# --------------------------------------------------------------------------- import cycles
def _module_edges(path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules ``path`` imports, at the top or inside functions: ``from a.b import c``
    is an edge to ``a.b.c`` when that is a module, else to ``a.b``."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for a in node.names:
                full = f"{node.module}.{a.name}"
                out.add(full if full in modules else node.module)
    return {m for m in out if m in modules}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The groups of two or more modules that reach each other (strongly connected components)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_two_modules_import_each_other():
    """No import cycle, not even one closed by an import inside a function: each module can be read
    (and imported) after the ones it uses."""
    modules = _modules()
    graph = {name: _module_edges(path, modules) - {name} for name, path in modules.items()}
    assert _cycles(graph) == []


def test_the_cycle_check_catches_a_cycle(tmp_path):
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("from jobs.stages import match\n")
    b.write_text("def f():\n    from jobs.stages.lid import LidStage\n")
    modules = {"jobs.stages.lid": a, "jobs.stages.match": b}
    graph = {name: _module_edges(path, modules) for name, path in modules.items()}
    assert graph == {"jobs.stages.lid": {"jobs.stages.match"}, "jobs.stages.match": {"jobs.stages.lid"}}
    assert _cycles(graph) == [["jobs.stages.lid", "jobs.stages.match"]]
    assert _cycles({"x": {"y"}, "y": set()}) == []


# --------------------------------------------------------------------------- stage names
def _stage_words() -> set[str]:
    from jobs.stages import STAGES

    return {s.name for s in STAGES} | {s.dir_name() for s in STAGES}


def _literal(node: ast.AST, words: set[str]) -> str | None:
    return node.value if isinstance(node, ast.Constant) and node.value in words else None


def _stage_name_uses(path: Path, words: set[str]) -> list[str]:
    """Places that treat a stage name as data: a list/tuple/set holding two or more stage names,
    a comparison with one, a dict keyed by two or more, or ``.stage("<name>")``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
            lits = {v for e in node.elts if (v := _literal(e, words))}
            if len(lits) >= 2:
                found.append(f"line {node.lineno}: a list of stage names {sorted(lits)}")
        elif isinstance(node, ast.Dict):
            lits = {v for k in node.keys if k is not None and (v := _literal(k, words))}
            if len(lits) >= 2:
                found.append(f"line {node.lineno}: a dict keyed by stage names {sorted(lits)}")
        elif isinstance(node, ast.Compare):
            for side in [node.left, *node.comparators]:
                if (v := _literal(side, words)) is not None:
                    found.append(f"line {node.lineno}: compares with the stage name {v!r}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "stage":
            for arg in node.args:
                if (v := _literal(arg, words)) is not None:
                    found.append(f"line {node.lineno}: .stage({v!r})")
    return found


def test_stage_names_live_in_the_stage_modules_only():
    words = _stage_words()
    stages_dir = REPO / "jobs" / "stages"
    bad = {}
    for name, path in _modules().items():
        if path.parent == stages_dir:
            continue  # each stage module and the registry may name stages
        uses = _stage_name_uses(path, words)
        if uses:
            bad[str(path.relative_to(REPO))] = uses
    assert bad == {}


def test_the_stage_name_check_catches_a_hand_written_stage_list(tmp_path):
    words = _stage_words()
    f = tmp_path / "x.py"
    f.write_text('STAGES = ["match", "count", "balance"]\nif s == "dedup":\n    pass\nrun.stage("shard")\n')
    uses = _stage_name_uses(f, words)
    assert len(uses) == 3, uses


def test_the_repository_cites_only_its_own_documents():
    """Code and docs refer to the repository's own documents (ARCHITECTURE.md, README.md), never to
    a design file outside it."""
    import re

    cite = re.compile(r"DESIGN(\.md)?\s*§|DESIGN\.md|\.\./shared/")
    bad = []
    for path in sorted(REPO.rglob("*")):
        if (not path.is_file() or ".git" in path.parts or path.suffix not in (".py", ".md", ".sh", ".yaml", ".toml")
                or path == Path(__file__)):
            continue
        for i, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if cite.search(line):
                bad.append(f"{path.relative_to(REPO)}:{i}: {line.strip()[:80]}")
    assert bad == []
    assert (REPO / "ARCHITECTURE.md").is_file()
