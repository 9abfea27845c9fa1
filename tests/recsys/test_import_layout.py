"""Layout: no import circles between the modules of ``recsys/`` (imports point one way only).

The graph is read statically (``ast``) from every ``import`` / ``from ... import`` in a module,
function-level (lazy) imports included: a lazy import hides a circle, it does not remove it.
"""

import ast
from pathlib import Path
from typing import Dict, List, Set

import recsys

ROOT = Path(recsys.__file__).parent


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(node: ast.AST, package: str) -> List[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:  # relative: from .x import y
            anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join(anchor + ([base] if base else []))
        return [base] + [f"{base}.{alias.name}" for alias in node.names]
    return []


def import_graph(root: Path = ROOT) -> Dict[str, Set[str]]:
    """Module -> the recsys modules it imports (a name imported from a package counts as the
    package, or as the submodule when the name is one)."""
    paths = {_module_name(p, root): p for p in root.rglob("*.py")}
    graph: Dict[str, Set[str]] = {}
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = {t for node in ast.walk(ast.parse(path.read_text())) for t in _imported(node, package)}
        graph[name] = {t for t in targets if t in paths and t != name}
    return graph


def import_circles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components of more than one module (Tarjan): each is an import circle."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    circles: List[List[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for other in sorted(graph[module]):
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            component = []
            while not component or component[-1] != module:
                component.append(stack.pop())
            if len(component) > 1:
                circles.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return circles


def test_the_circle_finder_finds_a_circle_and_a_clean_chain():
    assert import_circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert import_circles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_graph_sees_lazy_imports(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg.b import g\n")
    (package / "b.py").write_text("def g():\n    from pkg import a\n    from .a import x\n")
    graph = import_graph(package)
    assert graph["pkg.a"] == {"pkg.b"} and graph["pkg.b"] == {"pkg", "pkg.a"}
    assert import_circles(graph) == [["pkg.a", "pkg.b"]]


def test_no_two_recsys_modules_import_each_other():
    graph = import_graph()
    assert "recsys.distributed.plan_io" in graph and "recsys.distributed.sharding" in graph
    assert import_circles(graph) == [], "import circles: move what both modules need into one of them or a third"


def test_plan_io_does_not_import_sharding():
    graph = import_graph()
    assert "recsys.distributed.plan_io" in graph["recsys.distributed.sharding"]
    assert "recsys.distributed.sharding" not in graph["recsys.distributed.plan_io"]
