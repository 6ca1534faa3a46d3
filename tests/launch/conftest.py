"""Fixtures shared by the Ray launcher modules (one cluster, two nodes)."""
from __future__ import annotations

import pytest

from tests.trainer.runs import losses, train


@pytest.fixture(scope="session")
def local_losses(tmp_path_factory, char_data) -> list[float]:
    """The Ray jobs' config on the local launcher (torchrun, 2 ranks): the losses each job must match."""
    from tests.launch.test_ray_cluster import COMMON

    tmp = tmp_path_factory.mktemp("local")
    return losses(train(tmp, char_data, "local", "trainer.num_processes=2", *COMMON))
