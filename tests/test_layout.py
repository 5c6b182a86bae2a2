"""The package's layout: domain subpackages, one direction of dependency, no import cycles.

Every `import vqstudy...` counts, including imports inside functions, so a cycle cannot hide behind a
function-local import. `from pkg import name` counts as an edge to `pkg.name` when that is a module."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "vqstudy"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                           for a in node.names]
            for target in targets:
                while target and target not in modules:  # `import vqstudy.x.y` of a name inside a module
                    target = target.rpartition(".")[0]
                if target and target != name and target.startswith("vqstudy"):
                    graph[name].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycles_inside_vqstudy():
    graph = import_graph()
    assert len(graph) > 30
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph) or [])}"


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_dependencies_point_one_way():
    """cli -> studies -> models/training -> quantize -> kernels: the core never imports a domain or the CLI."""
    graph = import_graph()
    order = {"vqstudy.kernels": 0, "vqstudy.quantize": 1, "vqstudy.images": 2, "vqstudy.actions": 2,
             "vqstudy.sim": 3, "vqstudy.policy": 4, "vqstudy.cli": 5}

    def rank(module: str) -> int | None:
        return next((r for prefix, r in order.items() if module == prefix or module.startswith(prefix + ".")), None)

    bad = [(a, b) for a, targets in graph.items() for b in targets
           if rank(a) is not None and rank(b) is not None and rank(b) > rank(a)]
    assert not bad, f"imports against the layering: {bad}"
    assert not any(b.startswith("vqstudy.images") for a in graph if a.startswith("vqstudy.actions") for b in graph[a])
    assert not any(b.startswith("vqstudy.actions") for a in graph if a.startswith("vqstudy.images") for b in graph[a])


def test_public_names_from_the_top_level():
    import vqstudy
    import vqstudy.kernels

    for name in ("Quantizer", "QuantizerConfig", "CodebookUsage", "ActionTokenizer", "VQVAE", "HierarchicalVQVAE",
                 "bits_per_sample"):
        assert getattr(vqstudy, name).__name__ == name
    assert callable(vqstudy.kernels.nearest_code)
