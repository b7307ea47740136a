"""Heads: shapes, layer layouts, DINO's normalized last layer, SwAV prototype normalization."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from selfsup.methods.heads import DINOHead, PredictionHead, PrototypesHead, ProjectionHead


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("num_layers", [1, 2, 3])
def test_projection_head_shapes(num_layers):
    head = ProjectionHead(16, 32, 8, num_layers=num_layers)
    assert head(torch.randn(4, 16)).shape == (4, 8)
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == num_layers


def test_projection_head_simclr_layout():
    head = ProjectionHead(16, 32, 8)
    kinds = [type(m) for m in head.layers]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]


def test_projection_head_options():
    no_norm = ProjectionHead(16, 32, 8, batch_norm=False)
    assert not any(isinstance(m, nn.BatchNorm1d) for m in no_norm.modules())
    simsiam = ProjectionHead(16, 32, 8, num_layers=3, last_batch_norm=True)
    last = simsiam.layers[-1]
    assert isinstance(last, nn.BatchNorm1d) and not last.affine
    out = simsiam.train()(torch.randn(6, 16))
    assert torch.allclose(out.mean(0), torch.zeros(8), atol=1e-5)


def test_prediction_head_shape():
    head = PredictionHead(8, 32, 8)
    assert head(torch.randn(4, 8)).shape == (4, 8)


def test_dino_head_shapes_and_normalized_last_layer():
    head = DINOHead(16, output_dim=64, hidden_dim=32, bottleneck_dim=8)
    x = torch.randn(5, 16)
    out = head(x)
    assert out.shape == (5, 64)
    weight = head.last_layer.weight
    assert torch.allclose(weight.norm(dim=1), torch.ones(64), atol=1e-6)
    assert head.last_layer.magnitude is None  # norm_last_layer: nothing to learn
    # logits are cosines between the normalized bottleneck and each prototype
    expected = F.normalize(head.mlp(x), dim=-1) @ F.normalize(head.last_layer.direction, dim=1).T
    assert torch.allclose(out, expected, atol=1e-6)
    assert out.abs().max() <= 1 + 1e-6
    # still normalized after an optimizer step
    optimizer = torch.optim.SGD(head.parameters(), lr=10.0)
    head(x).sum().backward()
    optimizer.step()
    assert torch.allclose(head.last_layer.weight.norm(dim=1), torch.ones(64), atol=1e-6)


def test_dino_head_learned_magnitude():
    head = DINOHead(16, output_dim=12, hidden_dim=32, bottleneck_dim=8, norm_last_layer=False)
    magnitude = head.last_layer.magnitude
    assert magnitude.requires_grad and torch.all(magnitude == 1)
    with torch.no_grad():
        magnitude.fill_(3.0)
    assert torch.allclose(head.last_layer.weight.norm(dim=1), torch.full((12,), 3.0))


@pytest.mark.parametrize("num_layers, batch_norm", [(1, False), (3, True)])
def test_dino_head_variants(num_layers, batch_norm):
    head = DINOHead(16, output_dim=12, hidden_dim=32, bottleneck_dim=8, num_layers=num_layers,
                    batch_norm=batch_norm)
    assert head(torch.randn(4, 16)).shape == (4, 12)


def test_prototypes_head():
    head = PrototypesHead(8, num_prototypes=10)
    assert torch.allclose(head.prototypes.weight.norm(dim=1), torch.ones(10), atol=1e-6)
    scores = head(torch.randn(4, 8) * 7)
    assert scores.shape == (4, 10) and scores.abs().max() <= 1 + 1e-6
    with torch.no_grad():
        head.prototypes.weight.mul_(5)
    head.normalize_prototypes()
    assert torch.allclose(head.prototypes.weight.norm(dim=1), torch.ones(10), atol=1e-6)
    assert not head.prototypes.weight.grad_fn
