"""The package's structure, checked: no import cycle between modules and no import from a lower layer up.

Every ``import`` in ``rlhf_rewards/`` counts, including imports inside functions and under
``TYPE_CHECKING``: a lazy or type-only import is still a dependency a reader has to follow. The layers,
lowest first (a module may import its own layer and the ones below):

    errors, outputs, checks < pooling < contract < models < lora < engine < parallel < entrypoints < workers
    < reward, callbacks < server < cli, assets

The top-level ``rlhf_rewards/__init__.py`` is the public API and may import anything.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "rlhf_rewards"

LAYERS: list[set[str]] = [
    {"errors", "outputs", "checks"},
    {"pooling"},
    {"contract"},
    {"models"},
    {"lora"},
    {"engine"},
    {"parallel"},
    {"entrypoints"},
    {"workers"},
    {"reward", "callbacks"},
    {"server"},
    {"cli", "assets"},
]
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every ``rlhf_rewards.*`` module that ``path`` imports (relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "rlhf_rewards")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.split(".")[0] != "rlhf_rewards":
                continue
            found.add(module)
            for alias in node.names:  # ``from rlhf_rewards.x import y`` may import the submodule y
                candidate = f"{module}.{alias.name}"
                if _path_of(candidate) is not None:
                    found.add(candidate)
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "__import__" and node.args:
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and str(arg.value).startswith("rlhf_rewards"):
                found.add(str(arg.value))
    found.discard(me)
    return found


def _path_of(module: str) -> Path | None:
    base = PACKAGE.parent.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        graph[_module_name(path)] = {m for m in _imports(path) if _path_of(m) is not None}
    return graph


def test_every_package_has_a_layer() -> None:
    packages = {
        p.name if p.is_dir() else p.stem
        for p in PACKAGE.iterdir()
        if (p.is_dir() and (p / "__init__.py").exists()) or (p.suffix == ".py" and p.stem != "__init__")
    }
    assert packages - set(RANK) == set(), (
        "add the new package to LAYERS (and to the README's architecture map)"
    )


def test_no_upward_import() -> None:
    upward = []
    for module, deps in _graph().items():
        own = _layer(module)
        if own is None:  # rlhf_rewards/__init__.py: the public API
            continue
        for dep in sorted(deps):
            target = _layer(dep)
            if target is not None and RANK[target] > RANK[own]:
                upward.append(f"{module} -> {dep}")
    assert upward == []


def test_no_import_cycle() -> None:
    graph = _graph()

    # Package __init__ modules re-export their children; an edge child -> own package __init__ is how a
    # child reaches its siblings' public names, so cycles are looked for between modules, not through the
    # parent package's re-exports of its own children.
    def edges(module: str) -> set[str]:
        return {d for d in graph.get(module, ()) if not module.startswith(d + ".")}

    cycles = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(edges(node)):
            if state.get(dep) == 1:
                cycles.append(" -> ".join(stack[stack.index(dep) :] + [dep]))
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
    assert cycles == []


def test_checker_sees_upward_imports(tmp_path: Path) -> None:
    """The walker itself: a planted upward import and a planted relative import are both found."""
    source = "from rlhf_rewards.server.app import build_app\nfrom . import params\n"
    planted = PACKAGE / "pooling" / "_planted_for_test.py"
    planted.write_text(source)
    try:
        deps = _imports(planted)
    finally:
        planted.unlink()
    assert "rlhf_rewards.server.app" in deps and "rlhf_rewards.pooling.params" in deps


@pytest.mark.parametrize("module", ["rlhf_rewards.workers.base", "rlhf_rewards.engine.inputs"])
def test_old_import_paths_still_work(module: str) -> None:
    import importlib

    mod = importlib.import_module(module)
    from rlhf_rewards.contract import ModelInfo, normalize_prompts

    if module.endswith("workers.base"):
        assert mod.ModelInfo is ModelInfo
    else:
        assert mod.normalize_prompts is normalize_prompts
