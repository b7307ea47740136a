"""The mechanisms of DeepCluster, ODC and MoCo v1 that their papers depend on, on tiny backbones.

k-means (`methods.kmeans`): chunked reads of a float16 bank give the in-memory result; an empty
cluster takes over half of another (DeepCluster Sec. 3.3); PCA whitening against an SVD.
DeepCluster: k-means after each epoch's last step, the classifier re-initialized, the next
epoch's basis the principal axes of this one's features, pseudo-labels of separated groups.
ODC: the memory update and relabelling, centroids as cluster means every interval, small clusters
dissolved and refilled by splitting the largest. MoCo v1: InfoNCE with a linear head at tau 0.07;
shuffling BN in one process. Under DDP: tests/methods/test_methods_ddp.py.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from selfsup.methods import deepcluster, kmeans, moco_v1, odc
from selfsup.methods.shuffled_batch_norm import shuffle_across_ranks, shuffled_forward, unshuffle_across_ranks
from tests.methods.tiny_models import TinyBackbone, sgd_step, two_views


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def groups_on_a_circle(sizes: list[int], noise: float = 0.05) -> tuple[torch.Tensor, torch.Tensor]:
    """Points (n, 2) around len(sizes) evenly spaced directions, and each point's group (n,)."""
    angles = torch.arange(len(sizes)) * 2 * math.pi / len(sizes)
    centers = torch.stack([angles.cos(), angles.sin()], dim=1)
    groups = torch.cat([torch.full((size,), group) for group, size in enumerate(sizes)])
    return centers[groups] + noise * torch.randn(groups.numel(), 2), groups


def same_partition(labels: torch.Tensor, groups: torch.Tensor) -> bool:
    """Every group is one cluster and no two groups share one."""
    pairs = {(int(group), int(label)) for group, label in zip(groups, labels)}
    return len(pairs) == len(set(groups.tolist())) == len({label for _, label in pairs})


# ---------------------------------------------------------------------------- k-means


def test_kmeans_reads_a_float16_bank_in_chunks_like_the_points_in_memory():
    points, _ = groups_on_a_circle([40, 30, 30], noise=0.3)
    bank = F.normalize(points.repeat(1, 2), dim=1).half()  # (100, 4) float16
    rows = torch.randperm(100)[:70]
    chunked = kmeans.spherical_kmeans(bank, 5, 6, torch.Generator().manual_seed(3), chunk=7, rows=rows)
    whole = kmeans.spherical_kmeans(bank[rows].float(), 5, 6, torch.Generator().manual_seed(3))
    assert torch.equal(chunked[1], whole[1])
    assert torch.allclose(chunked[0], whole[0], atol=1e-6)
    rows_of_a_chunk = kmeans.rows_per_chunk(10000, 256)  # float32 scores and rows under 256 MiB
    assert rows_of_a_chunk * 4 * (10000 + 256) <= 2 ** 28 < (rows_of_a_chunk + 1) * 4 * (10000 + 256)


def test_an_empty_cluster_takes_over_half_of_another():
    # two distinct points only: whatever the start, two of the three centroids coincide and the
    # second never wins a point (ties go to the first)
    points = F.normalize(torch.tensor([[1.0, 0.0]] * 7 + [[0.0, 1.0]] * 3), dim=1)
    kept_centroids, kept = kmeans.spherical_kmeans(points, 3, 5, torch.Generator().manual_seed(0), empty="keep")
    assert torch.bincount(kept, minlength=3).min() == 0
    centroids, labels = kmeans.spherical_kmeans(points, 3, 5, torch.Generator().manual_seed(0), empty="split")
    sizes = torch.bincount(labels, minlength=3)
    assert sizes.min() >= 1 and int(sizes.sum()) == 10
    for cluster in range(3):  # a split cluster's points stay among themselves, centroids their means
        members = points[labels == cluster]
        assert torch.equal(members, members[:1].expand_as(members))
        assert torch.allclose(centroids[cluster], F.normalize(members.mean(0), dim=0), atol=1e-6)
    assert sorted(sizes.tolist()) in ([3, 3, 4], [1, 2, 7])  # identical points: split in halves, 7 or 3


def test_fewer_points_than_clusters_leave_some_empty_without_failing():
    points = F.normalize(torch.randn(3, 4), dim=1)
    _, labels = kmeans.spherical_kmeans(points, 5, 3, torch.Generator().manual_seed(0), empty="split")
    assert torch.bincount(labels, minlength=5).gt(0).sum() == 3


def test_pca_whitening_matches_an_independent_svd():
    mixing = torch.randn(6, 6, dtype=torch.float64)
    data = torch.randn(300, 6, dtype=torch.float64) @ mixing + 3.0
    rows = torch.arange(0, 300, 2)
    total, outer, count = kmeans.second_moments(data.half(), rows=rows, chunk=16)
    mean, matrix = kmeans.pca_whitening(total, outer, count, 3)
    selected = data[rows].half().double()
    centered = selected - selected.mean(0)
    _, singular, right = torch.linalg.svd(centered, full_matrices=False)
    expected = centered @ right[:3].T / (singular[:3] / math.sqrt(count))  # unit variance components
    ours = (selected.float() - mean) @ matrix
    signs = torch.sign((ours.double() * expected).sum(0))  # principal axes are defined up to sign
    assert torch.allclose(ours.double() * signs, expected, atol=1e-3)
    assert torch.allclose(torch.cov(ours.T.double(), correction=0), torch.eye(3, dtype=torch.float64), atol=1e-4)
    # fewer rows than dimensions: the missing components are 0, not noise divided by ~0
    _, few = kmeans.pca_whitening(*kmeans.second_moments(data[:3]), 6)
    assert torch.isfinite(few).all() and int((few.abs().sum(0) > 0).sum()) == 2


# ---------------------------------------------------------------------------- DeepCluster


def tiny_deepcluster(bank: int = 8, clusters: int = 3, pca_dim: int = 4) -> deepcluster.DeepCluster:
    options = deepcluster.DeepClusterOptions(num_clusters=clusters, pca_dim=pca_dim, kmeans_iterations=10,
                                             memory_bank_size=bank)
    return deepcluster.build_deepcluster(options, TinyBackbone(), 16)


def epoch_batches(images: torch.Tensor, batch: int = 4):
    for begin in range(0, images.shape[0], batch):
        yield {"view_0": images[begin:begin + batch], "index": torch.arange(begin, begin + batch)}


def test_deepcluster_clusters_after_each_epoch_and_reinitializes_its_classifier():
    model = tiny_deepcluster()
    images = torch.randn(8, 3, 8, 8)
    losses, runs, heads = [], [], []
    for step in range(6):  # 3 epochs of 2 steps
        batch = list(epoch_batches(images))[step % 2]
        losses.append(float(sgd_step(model, batch, lr=0.5)["loss"].detach()))
        heads.append(model.head.weight.detach().clone())
        model.on_step_end(step, 6)
        runs.append(int(model.kmeans_runs))
        if step % 2 == 1:  # a clustering has just run: a fresh N(0, 0.01) classifier, bias 0
            assert not torch.equal(model.head.weight, heads[-1])
            assert torch.equal(model.head.bias, torch.zeros(3))
            assert 0.005 < float(model.head.weight.detach().std()) < 0.015
    assert runs == [0, 1, 1, 2, 2, 3]
    assert losses[:2] == [0.0, 0.0] and all(loss > 0 for loss in losses[2:])
    # right after a re-initialization the logits are ~0: the loss is ln K, whatever was learnt before
    assert losses[2] == pytest.approx(math.log(3), abs=0.05) and losses[4] == pytest.approx(math.log(3), abs=0.05)
    assert not torch.allclose(heads[2], heads[4])  # a new draw each time
    assert bool((model.assignments >= 0).all()) and not bool(model.memory_filled.any())


def test_deepcluster_labels_separated_groups_and_weighs_samples_by_inverse_cluster_size():
    model = tiny_deepcluster(bank=30, clusters=3, pca_dim=2)
    points, groups = groups_on_a_circle([5, 10, 15])
    model.memory.copy_(points.half() * 4 + 1)  # any scale and offset: whitening removes them
    model.memory_filled.fill_(True)
    model.cluster()
    assert same_partition(model.assignments, groups)
    expected = torch.tensor([30 / (3 * 5), 30 / (3 * 10), 30 / (3 * 15)])
    assert torch.allclose(model.cluster_weights[model.assignments[[0, 5, 15]]], expected)
    assert int(model.kmeans_runs) == 1 and not bool(model.memory_filled.any())


def test_deepcluster_leaves_no_cluster_empty():
    model = tiny_deepcluster(bank=10, clusters=4, pca_dim=2)
    model.memory.copy_(torch.tensor([[1.0, 0.0]] * 6 + [[0.0, 1.0]] * 4).half())  # two distinct rows
    model.memory_filled.fill_(True)
    model.cluster()
    sizes = torch.bincount(model.assignments, minlength=4)
    assert sizes.min() >= 1
    assert torch.allclose(model.cluster_weights, 10 / (4 * sizes.float()))


def test_deepcluster_bank_holds_features_on_last_epochs_principal_axes():
    model = tiny_deepcluster()
    images = torch.randn(8, 3, 8, 8)
    with torch.no_grad():
        features = model.backbone(images).double()  # (8, 16): the first epoch's loss is 0, so no change
    for step, batch in enumerate(epoch_batches(images)):
        sgd_step(model, batch)
        model.on_step_end(step, 10)
    centered = features - features.mean(0)
    _, _, right = torch.linalg.svd(centered, full_matrices=False)
    expected = right[:4].T @ right[:4]  # the projector on the top-4 principal axes (sign-free)
    ours = model.projection.double() @ model.projection.double().T
    assert torch.allclose(ours, expected, atol=1e-4)
    assert torch.allclose(model.projection_mean.double(), features.mean(0), atol=1e-5)
    assert int(model.feature_count) == 0  # the moments start over for the next epoch
    batch = next(epoch_batches(images))
    with torch.no_grad():
        now = model.backbone(batch["view_0"])
    model(batch)
    stored = (now - model.projection_mean) @ model.projection
    assert torch.allclose(model.memory[:4].float(), stored, atol=2e-3)  # float16 rows


# ---------------------------------------------------------------------------- ODC


def tiny_odc(bank: int = 8, clusters: int = 2, min_size: int = 1, interval: int = 3) -> odc.ODC:
    options = odc.ODCOptions(neck_hidden_dim=8, embedding_dim=4, num_clusters=clusters,
                             min_cluster_size=min_size, centroid_update_interval=interval,
                             kmeans_iterations=10, memory_bank_size=bank)
    model = odc.build_odc(options, TinyBackbone(), 16)
    model.neck = nn.Linear(16, 4)  # no dropout: the features can be recomputed here
    return model


def cluster_means(memory: torch.Tensor, labels: torch.Tensor, clusters: int) -> torch.Tensor:
    return torch.stack([memory[labels == cluster].float().mean(0) for cluster in range(clusters)])


def test_odc_starts_from_kmeans_after_the_first_epoch_then_updates_memory_and_labels_online():
    model = tiny_odc(interval=100)
    images = torch.randn(8, 3, 8, 8)
    for step, batch in enumerate(epoch_batches(images)):
        assert float(sgd_step(model, batch)["loss"].detach()) == 0.0
        model.on_step_end(step, 10)
    assert bool(model.initialized) and bool((model.assignments >= 0).all())
    assert torch.allclose(model.centroids, cluster_means(model.memory, model.assignments, 2), atol=1e-6)
    batch = next(epoch_batches(images))
    old, old_labels = model.memory[:4].float(), model.assignments[:4].clone()
    with torch.no_grad():
        features = F.normalize(model.neck(model.backbone(batch["view_0"])), dim=1)
    outputs = model(batch)
    expected = F.normalize(0.5 * old + 0.5 * features, dim=1)
    assert torch.allclose(model.memory[:4].float(), expected, atol=2e-3)  # float16 rows
    new_labels = (model.memory[:4].float() @ model.centroids.T).argmax(1)
    assert torch.equal(model.assignments[:4], new_labels)
    assert float(outputs["label_change"]) == pytest.approx(float((new_labels != old_labels).float().mean()))


def test_odc_centroids_become_the_cluster_means_every_interval():
    model = tiny_odc(interval=3)
    images = torch.randn(8, 3, 8, 8)
    batches = list(epoch_batches(images))
    for step in range(2):  # the first epoch; k-means after step 1
        sgd_step(model, batches[step])
        model.on_step_end(step, 10)
    for step in range(2, 6):
        before = model.centroids.clone()
        sgd_step(model, batches[step % 2], lr=0.5)
        model.on_step_end(step, 10)
        if (step + 1) % 3 == 0:
            assert torch.allclose(model.centroids, cluster_means(model.memory, model.assignments, 2), atol=1e-6)
        else:
            assert torch.equal(model.centroids, before)


def test_odc_dissolves_small_clusters_and_splits_the_largest_into_the_emptied_one():
    model = tiny_odc(bank=12, clusters=3, min_size=2)
    halves = torch.tensor([[1.0, 0.2, 0, 0]] * 4 + [[1.0, -0.2, 0, 0]] * 4)  # cluster 1: two sub-groups
    model.memory.copy_(F.normalize(torch.cat([halves, torch.tensor([[0.0, 0, 1, 0]] * 3 + [[0.0, 0.3, 1, 0.1]])]),
                                   dim=1).half())
    model.memory_filled.fill_(True)
    model.assignments.copy_(torch.tensor([1] * 8 + [2] * 3 + [0]))  # cluster 0: one sample, too small
    model.update_centroids()
    model.initialized.fill_(True)
    receiving_centroid = model.centroids[2].clone()
    nearest_kept = 1 + int((model.memory[11].float() @ model.centroids[1:].T).argmax())
    model.handle_small_clusters(seed=0)
    assert nearest_kept == 2 and int(model.assignments[11]) == 2  # the small cluster's sample moved
    # cluster 1 (8 samples, the largest) was split by 2-means along its two sub-groups; one went to 0
    assert {tuple(model.assignments[:4].unique().tolist()), tuple(model.assignments[4:8].unique().tolist())} == \
        {(0,), (1,)}
    assert torch.equal(model.assignments[8:], torch.full((4,), 2))
    # the two halves' centroids are their means; the receiving cluster's waits for the next update
    assert torch.allclose(model.centroids[:2], cluster_means(model.memory, model.assignments, 3)[:2], atol=1e-6)
    assert torch.equal(model.centroids[2], receiving_centroid)
    assert int(model.small_clusters) == 1


# ---------------------------------------------------------------------------- MoCo v1


def test_moco_v1_loss_is_infonce_with_a_linear_head_at_tau_007():
    model = moco_v1.build_moco_v1(moco_v1.MoCoV1Options(projection_dim=4, queue_size=6), TinyBackbone(), 16)
    assert isinstance(model.projector, nn.Linear) and model.temperature == 0.07
    batch = two_views()
    queue = model.queue.clone()
    with torch.no_grad():
        q = F.normalize(model.projector(model.backbone(batch["view_0"])), dim=1)
        k = F.normalize(model.key_projector(model.key_backbone(batch["view_1"])), dim=1)
        logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue.T], dim=1) / 0.07
        expected = F.cross_entropy(logits, torch.zeros(4, dtype=torch.long))
    assert float(model(batch)["loss"].detach()) == pytest.approx(float(expected), rel=1e-5)
    assert torch.allclose(model.queue[:4], k, atol=1e-6) and int(model.queue_pointer) == 4
    online = [p.detach().clone() for p in model.backbone.parameters()]
    key_before = [p.clone() for p in model.key_backbone.parameters()]
    model.on_step_end(0, 10)
    for before, student, after in zip(key_before, online, model.key_backbone.parameters()):
        assert torch.allclose(after, 0.999 * before + 0.001 * student, atol=1e-7)


def test_shuffling_bn_in_one_process_is_the_encoder_and_round_trips():
    encoder = nn.Sequential(nn.Flatten(), nn.BatchNorm1d(48))
    images = torch.randn(6, 3, 4, 4)
    assert torch.allclose(shuffled_forward(encoder, images, seed=5), encoder(images), atol=1e-6)
    mine, permutation = shuffle_across_ranks(images, seed=5)
    assert torch.equal(mine, images[permutation]) and not torch.equal(permutation, torch.arange(6))
    assert torch.equal(unshuffle_across_ranks(mine, permutation), images)
