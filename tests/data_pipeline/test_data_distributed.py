"""The loader in real processes joined by gloo: for shard counts {1, 3, 17}, world sizes {1, 2, 3},
micro-batches {1, 4} and DataLoader workers {0, 2}, every sample comes exactly once per epoch and
the global stream (hence every global batch) is the same whatever the world size."""
import itertools
import json
import socket
from collections import Counter

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from neurograph.data_pipeline import StreamingTokenLoader

from .datasets import ids, numbered_dataset

SHARDS = {1: [52], 3: [20, 17, 13], 17: [1, 5, 2, 4, 3, 3, 1, 2, 5, 4, 3, 2, 1, 4, 5, 3, 2]}
COMBOS = [(shards, world, mb, workers) for shards in SHARDS for world in (1, 2, 3) for mb in (1, 4) for workers in (0, 2)]
SEED = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, size: int, port: int, dirs: dict, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=size)
    results = {}
    for shards, world, mb, workers in COMBOS:
        mine = None
        if rank < world:
            total = sum(SHARDS[shards])
            n = -(-2 * total // (mb * world))  # micro-batches covering two epochs
            loader = StreamingTokenLoader(dirs[shards], micro_batch_size=mb, rank=rank, world_size=world,
                                          num_workers=workers, seed=SEED)
            mine = [ids(b) for b in itertools.islice(iter(loader), n)]
        gathered = [None] * size
        dist.all_gather_object(gathered, mine)
        if rank == 0:  # global micro-batch k = the ranks' rows in rank order
            per_rank = gathered[:world]
            results[f"{shards}-{world}-{mb}-{workers}"] = [i for k in range(len(per_rank[0])) for r in range(world)
                                                          for i in per_rank[r][k]]
    if rank == 0:
        with open(out, "w") as f:
            json.dump(results, f)
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.slow
def test_exactly_once_and_world_size_invariant_over_the_matrix(tmp_path):
    dirs = {n: str(numbered_dataset(tmp_path / f"s{n}", counts)) for n, counts in SHARDS.items()}
    out = tmp_path / "streams.json"
    mp.start_processes(_rank_main, args=(3, _free_port(), dirs, str(out)), nprocs=3, join=True, start_method="fork")
    streams = json.loads(out.read_text())
    assert len(streams) == len(COMBOS)
    for shards, counts in SHARDS.items():
        total = sum(counts)
        reference = None
        for (s, world, mb, workers) in COMBOS:
            if s != shards:
                continue
            got = streams[f"{s}-{world}-{mb}-{workers}"]
            for epoch in (0, 1):
                assert Counter(got[epoch * total : (epoch + 1) * total]) == Counter(range(total)), (s, world, mb, workers, epoch)
            reference = reference or got
            n = min(len(got), len(reference))
            assert got[:n] == reference[:n], f"{shards} shards: world {world}, mb {mb}, workers {workers} reads another order"
