import math

import pytest
import torch

from selfsup.trainer.knn import knn_accuracy, weighted_knn_predict


def _clusters(per_class=20, num_classes=6, dim=16, seed=0):
    generator = torch.Generator().manual_seed(seed)
    centers = torch.randn(num_classes, dim, generator=generator) * 5
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    features = centers[labels] + 0.1 * torch.randn(len(labels), dim, generator=generator)
    return features, labels


def test_clustered_points_are_classified_perfectly():
    train, train_labels = _clusters(seed=0)
    queries, query_labels = _clusters(per_class=5, seed=0)
    queries = queries + 0.05 * torch.randn_like(queries)
    result = knn_accuracy(train, train_labels, queries, query_labels, num_classes=6, k=10)
    assert result == {"top1": pytest.approx(100.0), "top5": pytest.approx(100.0)}
    # chunking does not change the answer
    full = weighted_knn_predict(train, train_labels, queries, 6, k=10)
    chunked = weighted_knn_predict(train, train_labels, queries, 6, k=10, chunk_size=7)
    torch.testing.assert_close(full, chunked)
    # a similarity budget smaller than two bank rows: one query per block, the same answer
    budgeted = weighted_knn_predict(train, train_labels, queries, 6, k=10, similarity_budget=len(train) + 1)
    torch.testing.assert_close(full, budgeted)
    leave_one_out = weighted_knn_predict(train, train_labels, train, 6, k=10, exclude_self=True)
    torch.testing.assert_close(leave_one_out, weighted_knn_predict(train, train_labels, train, 6, k=10,
                                                                   exclude_self=True, similarity_budget=1))


def _unit(angle_degrees):
    radians = math.radians(angle_degrees)
    return [math.cos(radians), math.sin(radians)]


def test_similarity_weighting_beats_majority():
    # one very close neighbour of class 0, two farther neighbours of class 1
    train = torch.tensor([_unit(0), _unit(60), _unit(-60)]) * torch.tensor([[2.0], [0.5], [3.0]])
    train_labels = torch.tensor([0, 1, 1])
    query = torch.tensor([_unit(0)])
    scores = weighted_knn_predict(train, train_labels, query, num_classes=2, k=3, temperature=0.07)
    # exp(1/T) for class 0 vs 2 * exp(0.5/T) for class 1, normalized per query
    vote0, vote1 = math.exp(1 / 0.07), 2 * math.exp(0.5 / 0.07)
    torch.testing.assert_close(scores, torch.tensor([[vote0, vote1]]) / (vote0 + vote1))
    assert scores.argmax().item() == 0
    # with a very high temperature the weights are nearly equal: the majority wins
    flat = weighted_knn_predict(train, train_labels, query, num_classes=2, k=3, temperature=100.0)
    assert flat.argmax().item() == 1


def test_exclude_self_leave_one_out():
    # pairs of nearby points; each point's nearest other point has the same label except one outlier
    features = torch.tensor([_unit(0), _unit(5), _unit(90), _unit(95), _unit(180)])
    labels = torch.tensor([0, 0, 1, 1, 2])
    with_self = knn_accuracy(features, labels, features, labels, num_classes=3, k=1)
    assert with_self["top1"] == pytest.approx(100.0)  # every query finds itself
    scores = weighted_knn_predict(features, labels, features, 3, k=1, exclude_self=True)
    assert scores.argmax(dim=1).tolist() == [0, 0, 1, 1, 1]  # 180° is nearest to 95°
    leave_one_out = knn_accuracy(features, labels, features, labels, num_classes=3, k=1, exclude_self=True)
    assert leave_one_out["top1"] == pytest.approx(80.0)
    assert leave_one_out["top5"] == pytest.approx(100.0)  # 3 classes: top-3
    with pytest.raises(ValueError, match="exclude_self"):
        weighted_knn_predict(features, labels, features[:2], 3, exclude_self=True)


def test_exclude_self_keeps_duplicates_at_other_indices():
    features = torch.tensor([_unit(0), _unit(0), _unit(90)])
    labels = torch.tensor([0, 0, 1])
    scores = weighted_knn_predict(features, labels, features, 2, k=1, exclude_self=True)
    assert scores.argmax(dim=1).tolist() == [0, 0, 0]


def test_k_larger_than_bank_is_clamped():
    train, labels = _clusters(per_class=2, num_classes=3)
    scores = weighted_knn_predict(train, labels, train[:2], num_classes=3, k=100)
    assert scores.shape == (2, 3)
    torch.testing.assert_close(scores.sum(dim=1), torch.ones(2))
    assert (scores > 0).all()  # every bank entry voted
    result = knn_accuracy(train, labels, train, labels, num_classes=3, k=100, exclude_self=True)
    assert 0.0 <= result["top1"] <= 100.0


def test_top5_with_many_classes_and_bad_inputs():
    train = torch.eye(8)
    labels = torch.arange(8)
    graded = torch.arange(8, 0, -1, dtype=torch.float32)  # class ranking 0, 1, ..., 7
    queries = graded.repeat(3, 1)
    query_labels = torch.tensor([0, 4, 6])  # top-1 hit, top-5 hit only, miss
    result = knn_accuracy(train, labels, queries, query_labels, num_classes=8, k=8, temperature=0.5)
    assert result["top1"] == pytest.approx(100 / 3)
    assert result["top5"] == pytest.approx(200 / 3)
    with pytest.raises(ValueError, match="feature sizes"):
        weighted_knn_predict(train, labels, torch.ones(1, 3), 8)
    with pytest.raises(ValueError, match="labels"):
        weighted_knn_predict(train, labels + 1, queries, 8)
    with pytest.raises(ValueError, match="temperature"):
        weighted_knn_predict(train, labels, queries, 8, temperature=0.0)


def test_effective_rank_is_one_for_collapsed_features_and_the_dimension_for_isotropic_ones():
    from selfsup.trainer.evaluate import effective_rank

    generator = torch.Generator().manual_seed(0)
    direction = torch.randn(1, 16, generator=generator)
    collapsed = torch.randn(100, 1, generator=generator) * direction  # every sample on one line
    assert effective_rank(collapsed) == pytest.approx(1.0, abs=1e-3)
    assert effective_rank(torch.eye(16) * 3.0) == pytest.approx(16.0, rel=1e-4)
    two_directions = torch.cat([torch.eye(2).repeat(50, 1), torch.zeros(100, 14)], dim=1)
    assert effective_rank(two_directions) == pytest.approx(2.0, rel=1e-4)


def test_effective_rank_from_blocks_of_the_gram_matrix_equals_the_svd_of_the_whole_bank():
    from selfsup.trainer.evaluate import effective_rank

    features = torch.randn(300, 24, generator=torch.Generator().manual_seed(1)) * torch.linspace(0.1, 3.0, 24)
    shares = torch.linalg.svdvals(features.double())
    shares = shares / shares.sum() + 1e-7
    expected = float(torch.exp(-(shares * shares.log()).sum()))
    assert effective_rank(features, chunk=7) == pytest.approx(expected, rel=1e-9)
    assert effective_rank(features[:10]) == pytest.approx(effective_rank(features[:10], chunk=3), rel=1e-12)


def test_per_query_outcomes_are_the_top1_hits_in_query_order():
    train, train_labels = _clusters(seed=0)
    queries, query_labels = _clusters(per_class=5, seed=0)
    wrong = query_labels.clone()
    wrong[::3] = (wrong[::3] + 1) % 6  # every third query carries a label its cluster does not have
    result = knn_accuracy(train, train_labels, queries, wrong, num_classes=6, k=10, per_query=True)
    expected = [index % 3 != 0 for index in range(len(wrong))]
    assert result["top1_correct"] == expected
    assert result["top1"] == pytest.approx(100.0 * sum(expected) / len(expected))
    assert "top1_correct" not in knn_accuracy(train, train_labels, queries, wrong, num_classes=6, k=10)
