"""Fixtures shared by the Ray modules: one two-node cluster for the session, and the losses its
training jobs must match."""
from __future__ import annotations

from typing import Iterator

import pytest

from tests.launch.ray_nodes import RayCluster
from tests.trainer.runs import losses, train


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory) -> Iterator[RayCluster]:
    """A head and a second node on loopback (tests/launch/ray_nodes.py); tests that add or kill
    nodes leave two alive."""
    cluster = RayCluster(tmp_path_factory.mktemp("ray"))
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def local_losses(tmp_path_factory, char_data) -> list[float]:
    """The Ray jobs' config on the local launcher (torchrun, 2 ranks): the losses each job must match."""
    from tests.launch.test_ray_cluster import COMMON

    tmp = tmp_path_factory.mktemp("local")
    return losses(train(tmp, char_data, "local", "trainer.num_processes=2", *COMMON))
