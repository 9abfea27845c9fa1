"""A world of one process for the tests of this folder, destroyed at the end of the module."""

import pytest

from recsys.distributed.process_group import init_distributed, teardown


@pytest.fixture(scope="module")
def ctx():
    context = init_distributed()
    yield context
    teardown(context)
