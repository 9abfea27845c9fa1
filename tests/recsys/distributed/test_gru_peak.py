"""recsys.distributed.gru_peak: the dense estimate's cuDNN GRU term against the GPU allocator."""

import pytest
import torch

from recsys.distributed.gru_peak import gru_peak_bytes


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs cuDNN")
@pytest.mark.parametrize("hidden, dim, batch_size, length", [(32, 16, 1024, 50), (128, 64, 256, 200)])
def test_cudnn_gru_peak_matches_the_allocator(hidden, dim, batch_size, length):
    """The estimate's GRU forward peak (saved + cuDNN transient) against max_memory_allocated of
    nn.GRU forward + backward on the GPU, beyond its input and parameters (H100: 1.03x, 0.99x)."""
    measured, planned = gru_peak_bytes(hidden, dim, length, batch_size)
    assert planned == pytest.approx(measured, rel=0.10)


def saved_floats_per_row(cell: torch.nn.GRUCell, batch_size: int, device: str) -> float:
    """Floats per row that one ``nn.GRUCell`` step saves for backward (each storage once)."""
    storages = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    cell = cell.to(device)
    x = torch.randn(batch_size, cell.input_size, device=device, requires_grad=True)
    h = torch.randn(batch_size, cell.hidden_size, device=device, requires_grad=True)
    parameters = {p.untyped_storage().data_ptr() for p in cell.parameters()}
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        cell(x, h)
    return sum(n for ptr, n in storages.items() if ptr not in parameters) / 4 / batch_size


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA's fused GRU cell")
def test_cuda_gru_cell_saves_five_hidden_widths_more_than_the_cpu_cell():
    """MIMN's GRU cells (dense_estimate._mimn): on CUDA nn.GRUCell is _thnn_fused_gru_cell, which
    keeps both gate pre-activations and a 5h workspace: input + 12h floats per row, about 5h more
    than the CPU's cell-by-cell GRU (whose count the CPU tests check)."""
    from recsys.distributed.dense_estimate import FUSED_GRU_CELL_EXTRA_PER_HIDDEN

    cell = torch.nn.GRUCell(32, 32)
    cuda = saved_floats_per_row(cell, 1024, "cuda")
    cpu = saved_floats_per_row(cell, 1024, "cpu")
    assert cuda == 32 + 12 * 32
    assert cuda - cpu == pytest.approx(FUSED_GRU_CELL_EXTRA_PER_HIDDEN * 32, abs=8)
