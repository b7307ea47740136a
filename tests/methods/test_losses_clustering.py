"""DeepCluster's and ODC's pseudo-label losses against independent formulations: a per-sample loop,
torch's class-weighted cross-entropy (ODC's official loss), and, for weights 1 / cluster size, the
loss of sampling uniformly over the clusters (DeepCluster's sampler)."""

from __future__ import annotations

import math

import pytest
import torch

from selfsup.methods import losses


def loop_weighted_cross_entropy(logits, labels, weights):
    """sum_i w[y_i] (-log softmax(logits_i)[y_i]) / sum_i w[y_i], one sample at a time."""
    numerator, denominator = 0.0, 0.0
    for row, label in zip(logits.tolist(), labels.tolist()):
        if label < 0:
            continue
        log_normalizer = math.log(sum(math.exp(value) for value in row))
        numerator += float(weights[label]) * (log_normalizer - row[label])
        denominator += float(weights[label])
    return numerator / denominator


def test_weighted_cluster_cross_entropy_matches_a_loop_and_skips_unlabelled_samples():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(7, 5, generator=generator, dtype=torch.float64)
    labels = torch.tensor([0, 3, -1, 3, 1, 4, -1])
    weights = torch.tensor([0.5, 2.0, 1.0, 0.25, 3.0], dtype=torch.float64)
    loss = losses.weighted_cluster_cross_entropy(logits, labels, weights)
    assert float(loss) == pytest.approx(loop_weighted_cross_entropy(logits, labels, weights), rel=1e-12)


def test_weighted_cluster_cross_entropy_is_the_class_weighted_cross_entropy_of_odc():
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(16, 6, generator=generator, requires_grad=True)
    labels = torch.randint(0, 6, (16,), generator=generator)
    weights = torch.rand(6, generator=generator) + 0.1
    ours = losses.weighted_cluster_cross_entropy(logits, labels, weights)
    official = torch.nn.CrossEntropyLoss(weight=weights)(logits, labels)  # ODC's head.criterion
    assert float(ours.detach()) == pytest.approx(float(official.detach()), rel=1e-6)
    ours_gradient, = torch.autograd.grad(ours, logits)
    official_gradient, = torch.autograd.grad(torch.nn.CrossEntropyLoss(weight=weights)(logits, labels), logits)
    assert torch.allclose(ours_gradient, official_gradient, atol=1e-7)


def test_no_labelled_sample_gives_zero_attached_to_the_graph():
    logits = torch.randn(4, 3, requires_grad=True)
    loss = losses.weighted_cluster_cross_entropy(logits, torch.full((4,), -1), torch.ones(3))
    assert float(loss) == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros(4, 3))


def test_inverse_size_weights_give_the_loss_of_sampling_uniformly_over_clusters():
    # the whole (toy) train split as one batch: weights 1 / n_c make the loss the mean over clusters of
    # each cluster's mean loss, what DeepCluster's sampler (as many images from every cluster) averages
    generator = torch.Generator().manual_seed(2)
    labels = torch.tensor([0] * 6 + [1] * 2 + [2] * 1 + [3] * 3)
    logits = torch.randn(labels.numel(), 5, generator=generator, dtype=torch.float64)  # cluster 4 is empty
    sizes = torch.bincount(labels, minlength=5)
    weights = losses.cluster_size_weights(sizes, power=1.0)
    per_sample = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    per_cluster = [float(per_sample[labels == cluster].mean()) for cluster in range(4)]
    expected = sum(per_cluster) / 4
    assert float(losses.weighted_cluster_cross_entropy(logits, labels, weights)) == pytest.approx(expected, rel=1e-6)


def test_cluster_size_weights():
    sizes = torch.tensor([6, 2, 1, 3, 0])
    n = 12
    inverse = losses.cluster_size_weights(sizes, power=1.0)
    assert torch.allclose(inverse, torch.tensor([n / (4 * 6), n / (4 * 2), n / (4 * 1), n / (4 * 3), 0.0]))
    # ODC's official set_reweight: (1 / (hist + 1e-5)) ** 0.5, normalized to sum 1 (scale is immaterial)
    odc = losses.cluster_size_weights(sizes, power=0.5)
    official = (1.0 / (sizes.double() + 1e-5)) ** 0.5
    official = official / official.sum()
    present = sizes > 0
    ratio = odc[present].double() / official[present]
    assert torch.allclose(ratio, ratio[0].expand_as(ratio), rtol=1e-4)
    assert float(odc[4]) == 0.0  # an empty cluster carries no sample
    for weights in (inverse, odc, losses.cluster_size_weights(sizes, power=0.0)):
        assert float((weights * sizes).sum()) == pytest.approx(n)  # a sample weighs 1 on average
    assert torch.equal(losses.cluster_size_weights(sizes, power=0.0)[present], torch.ones(4))
