"""Fixtures shared by the whole suite."""

import os
from pathlib import Path

import pytest
import torch

# Triton kernels run in its interpreter on machines without CUDA. The flag is read when triton is
# first imported, and any test module may import it first (torch imports it lazily), so it is set
# here, before every test module.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("RECSYS_SHARED_DATA", ROOT / ".." / "shared" / "data"))


@pytest.fixture
def shared_data():
    """``shared_data("ml-100k")`` -> the real data set's path; skips the test when it is absent."""

    def locate(relative: str) -> Path:
        path = SHARED_DATA / relative
        if not path.exists():
            pytest.skip(f"real data {path} is absent (set RECSYS_SHARED_DATA to the shared data folder)")
        return path

    return locate


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a test module (``pytestmark = pytest.mark.usefixtures("one_thread")``):
    tiny models run fastest so, and the test machines' cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_addoption(parser):
    parser.addoption("--shard", default=None, metavar="I/N",
                     help="run only the I-th of N interleaved shards of the collected tests (0 <= I < N): N "
                          "processes side by side compile a GPU machine's Triton kernels on N cores")


def pytest_collection_modifyitems(config, items):
    shard = config.getoption("--shard")
    if shard is None:
        return
    try:
        index, count = (int(part) for part in shard.split("/"))
        if not 0 <= index < count:
            raise ValueError
    except ValueError:
        raise pytest.UsageError(f"--shard must be I/N with 0 <= I < N (e.g. 0/8), got {shard!r}") from None
    kept = [item for position, item in enumerate(items) if position % count == index]
    config.hook.pytest_deselected(items=[item for position, item in enumerate(items) if position % count != index])
    items[:] = kept
