"""Method state under real 2-process DDP (gloo, CPU) against one process on the whole batch.

Queues, memory banks and cluster labels must be the same on every rank (the trainer's
DistributedDataParallel broadcasts rank 0's buffers before each forward) and equal to what one
process computes on the concatenated batch: the methods enqueue / store what they gathered from
all ranks. DeepCluster's and ODC's k-means runs on rank 0 only; its pseudo-labels (and DeepCluster's
re-initialized classifier and next PCA basis) must reach the other rank. MoCo v1's and v2's key
encoder sees the batch shuffled across ranks (shuffling BN); on a backbone without BatchNorm the
keys, and so the queue, must come out exactly unshuffled, and with BatchNorm each key's statistics
must be those of its shuffled sub-batch, not of its own rank's batch.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from selfsup.methods import deepcluster, deepcluster_v2, moco_v1, moco_v2, npid, odc, swav
from selfsup.methods.shuffled_batch_norm import shuffle_permutation, shuffled_forward

WORLD_SIZE = 2
GLOBAL_BATCH = 8
STEPS = 3


class TinyBackbone(nn.Module):
    """(B, 3, 4, 4) -> (B, 16), no BatchNorm: every sample is processed on its own."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(48, 16)

    def forward(self, x):
        return self.linear(x.flatten(1))


def build(name: str) -> nn.Module:
    torch.manual_seed(0)
    if name == "moco_v2":
        options = moco_v2.MoCoV2Options(queue_size=12, projection_hidden_dim=8, projection_dim=4,
                                        momentum=0.9, final_momentum=0.9)
        return moco_v2.build_moco_v2(options, TinyBackbone(), 16)
    if name == "moco_v1":
        options = moco_v1.MoCoV1Options(queue_size=12, projection_dim=4, momentum=0.9)
        return moco_v1.build_moco_v1(options, TinyBackbone(), 16)
    if name == "deepcluster":  # every step is an epoch of the 8-row bank: k-means after each
        options = deepcluster.DeepClusterOptions(num_clusters=3, pca_dim=4, kmeans_iterations=5,
                                                 memory_bank_size=GLOBAL_BATCH)
        return deepcluster.build_deepcluster(options, TinyBackbone(), 16)
    if name == "odc":  # k-means after step 0, then online; the neck without dropout
        options = odc.ODCOptions(embedding_dim=4, num_clusters=3, min_cluster_size=2,
                                 centroid_update_interval=2, kmeans_iterations=5,
                                 memory_bank_size=GLOBAL_BATCH)
        model = odc.build_odc(options, TinyBackbone(), 16)
        model.neck = nn.Linear(16, 4)
        return model
    if name == "npid":
        options = npid.NPIDOptions(projection_dim=4, loss="softmax", num_negatives=0,
                                   memory_bank_size=GLOBAL_BATCH)
        return npid.build_npid(options, TinyBackbone(), 16)
    if name == "swav":
        options = swav.SwAVOptions(projection_hidden_dim=8, projection_dim=4, num_prototypes=3,
                                   queue_size=8, queue_start_fraction=0.0)
        model = swav.build_swav(options, TinyBackbone(), 16)
        model.projector = nn.Linear(16, 4)  # no BatchNorm: per-sample, comparable across ranks
        return model
    options = deepcluster_v2.DeepClusterV2Options(projection_hidden_dim=8, projection_dim=4,
                                                  num_prototypes=2, num_heads=1,
                                                  memory_bank_size=GLOBAL_BATCH)
    model = deepcluster_v2.build_deepcluster_v2(options, TinyBackbone(), 16)
    model.projector = nn.Linear(16, 4)
    return model


CASES = ["moco_v1", "moco_v2", "npid", "swav", "deepcluster_v2", "deepcluster", "odc"]
STATE = {"moco_v1": ["queue", "queue_pointer"], "moco_v2": ["queue", "queue_pointer"], "npid": ["memory"],
         "swav": ["queue", "queue_filled"],
         "deepcluster_v2": ["memory", "assignments", "centroids"],
         "deepcluster": ["memory", "assignments", "cluster_weights", "head.weight", "projection",
                         "kmeans_runs"],
         "odc": ["memory", "assignments", "centroids", "cluster_weights", "head.weight"]}


def data(step: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(100 + step)
    return {"view_0": torch.randn(GLOBAL_BATCH, 3, 4, 4, generator=generator),
            "view_1": torch.randn(GLOBAL_BATCH, 3, 4, 4, generator=generator),
            "index": torch.arange(GLOBAL_BATCH)}


def run(name: str, rank: int, world_size: int) -> dict:
    model = build(name)
    wrapped = DistributedDataParallel(model) if world_size > 1 else model
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    local = GLOBAL_BATCH // world_size
    losses = []
    for step in range(STEPS):
        batch = {key: value[rank * local:(rank + 1) * local] for key, value in data(step).items()}
        outputs = wrapped(batch)
        optimizer.zero_grad()
        outputs["loss"].backward()
        optimizer.step()
        model.on_step_end(step, STEPS)
        losses.append(outputs["loss"].detach())
    state = model.state_dict()
    return {"losses": torch.stack(losses), **{key: state[key].clone() for key in STATE[name]}}


def worker(rank, world_size, init_file, output_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world_size, timeout=datetime.timedelta(seconds=60))
    try:
        results = {name: run(name, rank, world_size) for name in CASES}
        results["shuffled_batch_norm"] = shuffled_batch_norm_probe(rank, world_size)
        torch.save(results, os.path.join(output_dir, f"rank{rank}.pt"))
        dist.barrier()  # both ranks done before gloo is torn down: a rank leaving first can abort the other
    finally:
        dist.destroy_process_group()


SHUFFLE_SEED = 3


def shuffled_batch_norm_probe(rank: int, world_size: int) -> dict:
    """This rank's images, their keys through a BatchNorm encoder with shuffling BN, and through
    the identity (the shuffle / unshuffle round trip)."""
    local = GLOBAL_BATCH // world_size
    images = data(0)["view_0"][rank * local:(rank + 1) * local]
    encoder = nn.Sequential(nn.Flatten(), nn.BatchNorm1d(48, affine=False))  # training mode: batch statistics
    return {"images": images, "keys": shuffled_forward(encoder, images, SHUFFLE_SEED),
            "round_trip": shuffled_forward(nn.Identity(), images, SHUFFLE_SEED)}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    directory = tmp_path_factory.mktemp("ddp_methods")
    root = str(Path(__file__).resolve().parents[2])
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(root)  # spawned children import this module by its package path
        mp.spawn(worker, args=(WORLD_SIZE, str(directory / "init"), str(directory)),
                 nprocs=WORLD_SIZE, join=True)
    per_rank = [torch.load(directory / f"rank{r}.pt") for r in range(WORLD_SIZE)]
    single = {name: run(name, 0, 1) for name in CASES}
    return per_rank, single


@pytest.mark.parametrize("name", CASES)
def test_state_is_global_and_matches_one_process(outcomes, name):
    per_rank, single = outcomes
    for key in STATE[name]:
        for rank, results in enumerate(per_rank):
            assert torch.allclose(results[name][key].float(), single[name][key].float(), atol=1e-5), \
                f"{name}.{key} on rank {rank} differs from one process"
    rank_losses = torch.stack([results[name]["losses"] for results in per_rank])  # (W, steps)
    assert torch.allclose(rank_losses.mean(dim=0), single[name]["losses"], atol=1e-5)


def test_moco_v2_queue_holds_the_unshuffled_keys(outcomes):
    _, single = outcomes
    queue = single["moco_v2"]["queue"]
    assert torch.allclose(queue.norm(dim=1), torch.ones(12), atol=1e-5)
    assert int(single["moco_v2"]["queue_pointer"]) == (STEPS * GLOBAL_BATCH) % 12
    assert F.normalize(queue, dim=1).shape == (12, 4)


def batch_normalized(images: torch.Tensor) -> torch.Tensor:
    """BatchNorm1d in training mode, written out: (x - batch mean) / sqrt(biased batch variance + eps)."""
    flat = images.flatten(1)
    return (flat - flat.mean(0)) / torch.sqrt(flat.var(0, unbiased=False) + 1e-5)


def test_shuffling_bn_takes_each_keys_statistics_from_its_shuffled_sub_batch(outcomes):
    per_rank, _ = outcomes
    probes = [results["shuffled_batch_norm"] for results in per_rank]
    for probe in probes:  # shuffle then unshuffle: each rank's own samples, in their order
        assert torch.equal(probe["round_trip"], probe["images"])
    everything = torch.cat([probe["images"] for probe in probes])  # (8, 3, 4, 4), by rank
    local = GLOBAL_BATCH // WORLD_SIZE
    permutation = shuffle_permutation(GLOBAL_BATCH, SHUFFLE_SEED)
    assert set(permutation[:local].tolist()) != set(range(local))  # the sub-batches mix the ranks
    expected = torch.empty(GLOBAL_BATCH, 48)
    for part in permutation.split(local):  # what each rank embedded
        expected[part] = batch_normalized(everything[part])
    for rank, probe in enumerate(probes):
        assert torch.allclose(probe["keys"], expected[rank * local:(rank + 1) * local], atol=1e-5)
        own_batch_statistics = batch_normalized(probe["images"])  # what shuffling BN avoids
        assert not torch.allclose(probe["keys"], own_batch_statistics, atol=1e-3)


def test_deepcluster_and_odc_share_their_pseudo_labels_across_ranks(outcomes):
    per_rank, single = outcomes
    assert int(single["deepcluster"]["kmeans_runs"]) == STEPS
    for name in ("deepcluster", "odc"):
        labels = [results[name]["assignments"] for results in per_rank]
        assert bool((labels[0] >= 0).all()) and torch.equal(labels[0], labels[1])
        assert labels[0].unique().numel() > 1  # a real clustering, not one cluster for all
