"""The layers of docs/architecture.md, checked on the code: who may import whom, no cycles, no giant modules.

Every import counts, including those inside functions (a lazy import is still a dependency).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mitosis_cli"
GROUND = {"errors", "values", "runtime"}  # plain modules every layer may use
ALLOWED = {
    "analysis": {"analysis"},
    "io": {"io"},
    "models": {"models"},
    "data": {"data"},
    "training": {"training", "io", "models", "data"},
    "report": {"report", "io", "analysis"},
    "stages": {"stages", "io", "models", "data", "analysis", "training", "report"},
    "cli": {"cli", "stages", "io", "training"},  # io: format constants; training: TrainConfig, the config object
}
CLI_FROM_TRAINING = {"mitosis_cli.training.config"}


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    package = _module(path) if path.name == "__init__.py" else _module(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("mitosis_cli")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if base.startswith("mitosis_cli"):
                # `from mitosis_cli.analysis import accuracy` imports the module mitosis_cli.analysis.accuracy
                for alias in node.names:
                    submodule = f"{base}.{alias.name}"
                    is_module = (PACKAGE.parent / submodule.replace(".", "/")).with_suffix(".py").exists()
                    found.add(submodule if is_module else base)
    return found


def _graph() -> dict[str, set[str]]:
    return {_module(p): _imports(p) for p in PACKAGE.rglob("*.py")}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_layers_import_only_downwards() -> None:
    wrong = []
    for module, imported in _graph().items():
        layer = _layer(module)
        if layer not in ALLOWED:  # the package's __init__ (the lazy API), __main__ and the ground modules
            continue
        for target in imported:
            other = _layer(target)
            if other in GROUND or other == "":
                continue
            if other not in ALLOWED[layer] or (layer == "cli" and other == "training" and target not in CLI_FROM_TRAINING):
                wrong.append(f"{module} imports {target}")
    assert not wrong, "imports against the layering of docs/architecture.md:\n" + "\n".join(sorted(wrong))


def test_ground_modules_import_no_layer() -> None:
    graph = _graph()
    for name in GROUND:
        assert {_layer(t) for t in graph[f"mitosis_cli.{name}"]} <= {*GROUND, ""}, name


def test_no_import_cycles() -> None:
    graph = _graph()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if nxt == node or nxt not in graph:
                continue
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    # a package importing its own submodules (an __init__ re-export) is not a cycle of the layering
    real = [c for c in cycles if not all(other.startswith(c[0] + ".") or c[0].startswith(other + ".") for other in c[1:])]
    assert not real, "import cycles: " + "; ".join(" -> ".join(c) for c in real)


def test_modules_stay_small_and_cli_stays_thin() -> None:
    sizes = {p: len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    assert max(sizes.values()) <= 450, max(sizes, key=sizes.get)
    cli = {p.name: n for p, n in sizes.items() if p.parent.name == "cli"}
    # 1,300: most of cli/ is option declarations and help text (panels, 2-4 examples per command), not logic
    assert sum(cli.values()) <= 1300 and max(cli.values()) <= 160, cli
