"""The relative-bias index lives in ``recsys/ops``: the op floors (``recsys/ops``, ``kernels``) import
nothing from ``recsys/modules``, and ``recsys.modules.relative_bias`` re-exports the same functions."""

import ast
from pathlib import Path

import recsys.modules.relative_bias as module_bias
import recsys.ops.relative_bias_index as ops_bias

REPO = Path(__file__).resolve().parents[3]


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    names |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    return names


def test_ops_and_kernels_never_import_modules():
    files = sorted((REPO / "recsys" / "ops").glob("*.py")) + sorted((REPO / "kernels").glob("*.py"))
    assert files
    offending = {f.name: sorted(m for m in imported_modules(f) if m.startswith("recsys.modules")) for f in files}
    assert {name: found for name, found in offending.items() if found} == {}


def test_modules_re_exports_the_ops_index():
    for name in ("relative_bias_index", "next_timestamps", "time_buckets", "gather_relative_bias", "DEFAULT_TIME_BUCKET_BASE"):
        assert getattr(module_bias, name) is getattr(ops_bias, name)
