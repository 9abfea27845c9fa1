"""benchmarks/saved_bytes_by_op.py on CPU: the graph walk's saved bytes against autograd's own
saved-tensor hooks, and the report on a small zoo model."""

import importlib.util
import sys
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "saved_bytes_by_op.py"
spec = importlib.util.spec_from_file_location("saved_bytes_by_op_benchmark", SCRIPT)
bench = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = bench
spec.loader.exec_module(bench)


def test_the_graph_walk_counts_what_autograd_saves():
    storages = {}

    def pack(tensor):
        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    cell, head = torch.nn.GRUCell(8, 16), torch.nn.Linear(16, 1)
    x = torch.randn(32, 10, 8)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        h = torch.zeros(32, 16)
        for t in range(x.shape[1]):
            h = cell(x[:, t], h)
        loss = torch.sigmoid(head(h)).sum()
    totals, counts = bench.saved_bytes_by_node(loss)
    assert sum(totals.values()) == sum(storages.values())
    assert counts["SigmoidBackward0"] == 1 + 2 * x.shape[1]  # the head's and each step's two gates


def test_report_of_a_zoo_model_on_cpu():
    report = bench.measure("emb_mlp", batch=16, max_len=8, device="cpu")
    assert report["saved_total_bytes"] == sum(report["saved_bytes"].values()) > 0
    assert report["estimated_activation_bytes"] > 0 and "forward_peak_bytes" not in report
    table = bench.format_table([report, report])
    assert "total saved" in table and "diff MB" in table
