"""The mechanism of each method that its paper depends on, checked on tiny backbones (fast).

EMA teachers follow the scheduled momentum; MoCo's queue is a ring buffer with a pointer;
NNCLR's positives come from its support set; DINO's center and teacher temperature, and its
self-distillation sharpening when the targets are predictable; SwAV's prototypes stay normalized
(the trainer freezes them at first: tests/trainer/test_frozen_last_layer.py), and its queue joins
Sinkhorn once full; DeepCluster-v2 re-clusters every epoch; NPID's memory moves towards the new
features; MAE's encoder sees only the visible patches; SimMIM replaces masked patches by its
token. The pretext tasks are in test_pretext_mechanics.py.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from selfsup.methods import byol, deepcluster_v2, dino, losses, mae, moco_v2, nnclr, npid, simmim, swav
from selfsup.methods.momentum import cosine_momentum, enqueue_
from tests.methods.tiny_models import TinyBackbone, sgd_step, tiny_vit, two_views


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# ---------------------------------------------------------------------------- EMA teachers


def test_cosine_momentum_schedule_endpoints():
    assert cosine_momentum(0, 100, 0.996) == pytest.approx(0.996)
    assert cosine_momentum(50, 100, 0.996) == pytest.approx((0.996 + 1) / 2)
    assert cosine_momentum(100, 100, 0.996) == pytest.approx(1.0)
    assert cosine_momentum(7, 100, 0.999, 0.999) == pytest.approx(0.999)


def test_byol_target_is_an_ema_with_the_scheduled_momentum():
    model = byol.build_byol(byol.BYOLOptions(projection_hidden_dim=8, projection_dim=4,
                                             prediction_hidden_dim=8), TinyBackbone(), 16)
    total = 10
    for step in range(3):
        target_before = [p.clone() for p in model.target_backbone.parameters()]
        sgd_step(model, two_views())
        momentum = float(model.momentum)
        assert momentum == pytest.approx(cosine_momentum(step, total, 0.996))
        model.on_step_end(step, total)
        for before, online, after in zip(target_before, model.backbone.parameters(),
                                         model.target_backbone.parameters()):
            assert torch.allclose(after, momentum * before + (1 - momentum) * online, atol=1e-6)
        assert not any(p.requires_grad for p in model.target_backbone.parameters())
    assert float(model.momentum) == pytest.approx(cosine_momentum(3, total, 0.996))


# ---------------------------------------------------------------------------- queues


def test_enqueue_is_a_ring_buffer_with_a_pointer():
    queue, pointer = torch.zeros(5, 2), torch.zeros((), dtype=torch.long)
    enqueue_(queue, pointer, torch.ones(3, 2))
    assert int(pointer) == 3 and queue[:3].eq(1).all() and queue[3:].eq(0).all()
    enqueue_(queue, pointer, torch.full((3, 2), 2.0))  # wraps around: rows 3, 4, 0
    assert int(pointer) == 1
    assert queue[:, 0].tolist() == [2.0, 1.0, 1.0, 2.0, 2.0]


def test_moco_v2_enqueues_the_keys_and_dequeues_the_oldest():
    model = moco_v2.build_moco_v2(moco_v2.MoCoV2Options(queue_size=6, projection_hidden_dim=8,
                                                        projection_dim=4), TinyBackbone(), 16)
    first, second = two_views(), two_views()
    with torch.no_grad():
        keys_1 = F.normalize(model.key_projector(model.key_backbone(first["view_1"])), dim=1)
    model(first)
    assert int(model.queue_pointer) == 4
    assert torch.allclose(model.queue[:4], keys_1, atol=1e-6)
    with torch.no_grad():
        keys_2 = F.normalize(model.key_projector(model.key_backbone(second["view_1"])), dim=1)
    model(second)
    assert int(model.queue_pointer) == 2  # 4 + 4 mod 6
    assert torch.allclose(model.queue[[4, 5, 0, 1]], keys_2, atol=1e-6)
    assert torch.allclose(model.queue[2:4], keys_1[2:4], atol=1e-6)  # the newest of batch one stay


def test_moco_v2_loss_is_infonce_against_the_queue():
    model = moco_v2.build_moco_v2(moco_v2.MoCoV2Options(queue_size=6, projection_hidden_dim=8,
                                                        projection_dim=4, temperature=0.2),
                                  TinyBackbone(), 16)
    batch = two_views()
    queue = model.queue.clone()
    with torch.no_grad():
        q = F.normalize(model.projector(model.backbone(batch["view_0"])), dim=1)
        k = F.normalize(model.key_projector(model.key_backbone(batch["view_1"])), dim=1)
        logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue.T], dim=1) / 0.2
        expected = F.cross_entropy(logits, torch.zeros(4, dtype=torch.long))
    assert float(model(batch)["loss"].detach()) == pytest.approx(float(expected), rel=1e-5)


def test_nnclr_positive_is_the_nearest_support_set_entry():
    model = nnclr.build_nnclr(nnclr.NNCLROptions(support_set_size=5, projection_hidden_dim=8,
                                                 projection_dim=4, prediction_hidden_dim=8),
                              TinyBackbone(), 16)
    support = F.normalize(torch.randn(5, 4), dim=1)
    model.support_set.copy_(support)
    z = torch.randn(3, 4)
    neighbours, similarity = model.nearest_neighbours(z)
    expected = (F.normalize(z, dim=1) @ support.T).argmax(dim=1)
    assert torch.equal(neighbours, support[expected])  # exact rows of the support set
    assert torch.allclose(similarity, (F.normalize(z, dim=1) * support[expected]).sum(1))
    model(two_views(batch=3))
    assert int(model.support_pointer) == 3  # view-0 projections were enqueued


# ---------------------------------------------------------------------------- DINO


def dino_model(**overrides) -> dino.DINO:
    options = dino.DINOOptions(output_dim=12, hidden_dim=8, bottleneck_dim=4, **overrides)
    return dino.build_dino(options, TinyBackbone(), 16)


def test_dino_center_is_an_ema_of_the_teacher_mean():
    model = dino_model(center_momentum=0.9)
    batch = two_views()
    with torch.no_grad():
        teacher = model.teacher_head(model.teacher_backbone()(torch.cat([batch["view_0"], batch["view_1"]])))
    model(batch)
    assert torch.allclose(model.center, 0.1 * teacher.mean(dim=0, keepdim=True), atol=1e-6)
    previous = model.center.clone()
    model(batch)
    assert torch.allclose(model.center, 0.9 * previous + 0.1 * teacher.mean(0, keepdim=True), atol=1e-6)


def test_dino_loss_and_logged_entropy_use_the_center_before_its_update():
    model = dino_model(center_momentum=0.5, teacher_temperature=0.04, warmup_teacher_temperature=0.04)
    batch = two_views()
    model.center.copy_(torch.randn(1, 12))
    center = model.center.clone()
    with torch.no_grad():
        teacher = model.teacher_head(model.teacher_backbone()(torch.cat([batch["view_0"], batch["view_1"]])))
        student = model._student([batch["view_0"], batch["view_1"]])
    outputs = model(batch)
    assert outputs["loss"].item() == pytest.approx(float(losses.dino_loss(student, teacher, center, 0.1, 0.04)),
                                                   rel=1e-5)
    targets = torch.softmax((teacher - center) / 0.04, dim=-1)
    entropy = -(targets * targets.clamp_min(1e-12).log()).sum(dim=-1).mean()
    assert outputs["teacher_entropy"].item() == pytest.approx(float(entropy), rel=1e-5)
    assert not torch.allclose(model.center, center)  # updated after the targets were taken


def test_dino_sinkhorn_centering_uses_the_batch_codes_and_keeps_no_center():
    model = dino_model(centering="sinkhorn", teacher_temperature=0.07, warmup_teacher_temperature=0.07)
    batch = dict(two_views(), view_2=torch.randn(4, 3, 4, 4))
    with torch.no_grad():
        teacher = model.teacher_head(model.teacher_backbone()(torch.cat([batch["view_0"], batch["view_1"]])))
        student = model._student([batch["view_0"], batch["view_1"], batch["view_2"]])
    outputs = model(batch)
    expected = losses.dino_sinkhorn_loss(student, teacher, 0.1, 0.07)
    assert outputs["loss"].item() == pytest.approx(float(expected), rel=1e-5)
    assert not torch.allclose(outputs["loss"].detach(), losses.dino_loss(student, teacher, model.center, 0.1, 0.07))
    assert torch.count_nonzero(model.center) == 0  # the running center is not used
    outputs["loss"].backward()
    assert model.head.last_layer.direction.grad is not None


def test_dino_refuses_an_unknown_centering():
    with pytest.raises(ValueError, match="centering='median'.*mean, sinkhorn"):
        dino_model(centering="median")


def test_dino_teacher_temperature_warms_up():
    model = dino_model(warmup_teacher_temperature=0.04, teacher_temperature=0.07,
                       teacher_temperature_warmup_fraction=0.5)
    total = 10
    assert float(model.teacher_temperature) == pytest.approx(0.04)
    temperatures = []
    for step in range(total):
        outputs = model(dict(two_views(), view_2=torch.randn(4, 3, 4, 4)))  # one local crop
        temperatures.append(float(outputs["teacher_temperature"]))
        model.on_step_end(step, total)
    assert temperatures[:6] == pytest.approx([0.04, 0.046, 0.052, 0.058, 0.064, 0.07])
    assert temperatures[6:] == pytest.approx([0.07] * 4)


def test_dino_names_its_last_layer_and_its_teacher_to_the_trainer():
    model = dino_model()
    last_layer = model.last_layer_parameters()
    assert last_layer and {id(p) for p in last_layer} == {id(p) for p in model.head.last_layer.parameters()}
    outputs = model(dict(two_views(), view_2=torch.randn(4, 3, 4, 4)))
    outputs["loss"].backward()  # the method itself no longer zeroes the last layer's gradient
    assert float(model.head.last_layer.direction.grad.abs().sum()) > 0
    assert model.teacher_backbone() is model.teacher_encoder


# ---------------------------------------------------------------------------- SwAV


def swav_model(**overrides) -> swav.SwAV:
    options = swav.SwAVOptions(projection_hidden_dim=8, projection_dim=4, num_prototypes=6,
                               **overrides)
    return swav.build_swav(options, TinyBackbone(), 16)


def test_swav_prototypes_stay_normalized_and_are_its_last_layer():
    model = swav_model(queue_size=0)
    total = 4
    weight = model.prototypes.prototypes.weight
    assert model.last_layer_parameters() == [weight]  # the trainer freezes them at first
    for step in range(total):
        with torch.no_grad():
            weight.mul_(3.0)  # as if the optimizer had moved them off the sphere
        outputs = model(dict(two_views(), view_2=torch.randn(4, 3, 4, 4)))
        assert torch.allclose(weight.norm(dim=1), torch.ones(6), atol=1e-5)
        model.zero_grad()
        outputs["loss"].backward()
        assert float(weight.grad.abs().sum()) > 0
        model.on_step_end(step, total)


def test_swav_queue_starts_late_and_joins_sinkhorn_once_full():
    model = swav_model(queue_size=8, queue_start_fraction=0.2)
    total, used = 10, []
    for step in range(total):
        outputs = model(two_views())
        used.append(bool(outputs["queue_in_use"]))
        model.on_step_end(step, total)
    # active from step 2; filled by 4 per step (steps 2, 3) -> used from step 4
    assert used == [False] * 4 + [True] * 6
    assert int(model.queue_filled) == 8
    assert torch.allclose(model.queue.norm(dim=2), torch.ones(2, 8), atol=1e-5)


# ---------------------------------------------------------------------------- DeepCluster-v2


def test_spherical_kmeans_recovers_separated_clusters():
    centers = F.normalize(torch.eye(3, 5), dim=1)
    points = F.normalize(centers.repeat_interleave(10, 0) + 0.05 * torch.randn(30, 5), dim=1)
    found, labels = deepcluster_v2.spherical_kmeans(points, 3, 10, torch.Generator().manual_seed(0))
    for group in range(3):  # each true cluster is one found cluster
        assert labels[group * 10:(group + 1) * 10].unique().numel() == 1
    assert labels.unique().numel() == 3
    assert torch.allclose(found.norm(dim=1), torch.ones(3), atol=1e-5)
    # assigning in blocks of 4 points finds the same clustering
    blocked, blocked_labels = deepcluster_v2.spherical_kmeans(points, 3, 10, torch.Generator().manual_seed(0), 4)
    assert torch.equal(blocked_labels, labels) and torch.allclose(blocked, found)


def test_deepcluster_v2_reassigns_every_epoch():
    options = deepcluster_v2.DeepClusterV2Options(projection_hidden_dim=8, projection_dim=4,
                                                  num_prototypes=3, num_heads=2,
                                                  memory_bank_size=8)
    model = deepcluster_v2.build_deepcluster_v2(options, TinyBackbone(), 16)
    images = two_views(batch=8)
    runs, losses, snapshots = [], [], []
    for step in range(6):  # 2 steps of 4 samples = one epoch of the 8-sample bank
        half = slice(0, 4) if step % 2 == 0 else slice(4, 8)
        batch = {"view_0": images["view_0"][half], "view_1": images["view_1"][half],
                 "index": torch.arange(8)[half]}
        outputs = sgd_step(model, batch)
        losses.append(float(outputs["loss"].detach()))
        model.on_step_end(step, 6)
        runs.append(int(model.kmeans_runs))
        snapshots.append(model.centroids.clone())
    assert runs == [0, 1, 1, 2, 2, 3]  # k-means after every epoch
    assert losses[:2] == [0.0, 0.0] and all(loss > 0 for loss in losses[2:])
    assert bool(model.memory_filled.all()) and bool((model.assignments >= 0).all())
    assert not torch.equal(snapshots[1], snapshots[3])  # new centroids each epoch
    # the labels are the nearest centroid of each image's stored embedding
    for head in range(2):
        bank = model.memory[head % 2]
        assert torch.equal((bank @ model.centroids[head].T).argmax(1), model.assignments[head])


def test_memory_bank_methods_ask_for_the_sample_index():
    model = npid.build_npid(npid.NPIDOptions(projection_dim=4, num_negatives=4,
                                             memory_bank_size=8), TinyBackbone(), 16)
    with pytest.raises(KeyError, match="index"):
        model(two_views())
    with pytest.raises(ValueError, match="memory_bank_size"):
        model(dict(two_views(), index=torch.tensor([0, 1, 2, 9])))


# ---------------------------------------------------------------------------- NPID


@pytest.mark.parametrize("loss", ["nce", "softmax"])
def test_npid_memory_moves_towards_the_features(loss):
    options = npid.NPIDOptions(projection_dim=4, num_negatives=0 if loss == "softmax" else 4,
                               loss=loss, memory_bank_size=10, memory_momentum=0.5)
    model = npid.build_npid(options, TinyBackbone(), 16)
    batch = dict(two_views(), index=torch.tensor([7, 2, 5, 0]))
    before = model.memory.clone()
    with torch.no_grad():
        features = F.normalize(model.projector(model.backbone(batch["view_0"])), dim=1)
    outputs = model(batch)
    assert torch.isfinite(outputs["loss"])
    expected = F.normalize(0.5 * before[[7, 2, 5, 0]] + 0.5 * features, dim=1)
    assert torch.allclose(model.memory[[7, 2, 5, 0]], expected, atol=1e-6)
    untouched = [1, 3, 4, 6, 8, 9]
    assert torch.equal(model.memory[untouched], before[untouched])
    if loss == "nce":  # Z estimated once, from the first batch
        normalizer = float(model.normalizer)
        assert normalizer > 0
        model(batch)
        assert float(model.normalizer) == normalizer


# ---------------------------------------------------------------------------- masked


def test_mae_encoder_sees_only_the_visible_patches():
    model = mae.build_mae(mae.MAEOptions(decoder_dim=8, decoder_depth=1, decoder_heads=2),
                          tiny_vit(), 16)
    images = torch.randn(2, 3, 16, 16)  # 4 x 4 = 16 patches of 4 px
    mask = mae.random_mask(2, 16, 0.75, images.device)
    assert mask.sum(dim=1).tolist() == [12, 12]
    seen = []
    original = model.backbone.forward_tokens
    model.backbone.forward_tokens = lambda x, m=None, **kw: seen.append(original(x, m, **kw)) or seen[-1]
    model({"view_0": images, "mask": mask})
    assert seen[0].shape == (2, 1 + 4, 16)  # class token + the 4 visible patches
    # masked pixels cannot change what the encoder computes
    changed = images.clone()
    pixel_mask = mask.reshape(2, 4, 4).repeat_interleave(4, 1).repeat_interleave(4, 2)
    changed = torch.where(pixel_mask[:, None], torch.randn_like(images), changed)
    assert torch.allclose(original(images, mask), original(changed, mask), atol=1e-6)


def test_mae_loss_counts_only_masked_patches():
    model = mae.build_mae(mae.MAEOptions(decoder_dim=8, decoder_depth=1, decoder_heads=2),
                          tiny_vit(), 16)
    images = torch.randn(2, 3, 16, 16)
    mask = mae.random_mask(2, 16, 0.75, images.device)
    outputs = model({"view_0": images, "mask": mask})
    outputs["loss"].backward()
    assert model.mask_token.grad is not None and model.mask_token.grad.abs().sum() > 0
    assert outputs["mask_ratio"] == pytest.approx(0.75)


def test_simmim_masks_with_its_token_and_upsamples_cells():
    model = simmim.build_simmim(simmim.SimMIMOptions(), tiny_vit(), 16)
    assert isinstance(model.backbone.mask_token, nn.Parameter)
    images = torch.randn(2, 3, 16, 16)
    cells = simmim.random_cell_mask(2, (2, 2), 0.5, images.device)  # a 2 x 2 grid of 8 px cells
    mask = model.patch_mask({"mask": cells}, images)
    assert mask.shape == (2, 16) and mask.float().mean() == pytest.approx(0.5)
    cells = mask.reshape(2, 4, 4)
    assert torch.equal(cells[:, ::2, ::2], cells[:, 1::2, 1::2])  # whole 2 x 2 blocks of patches
    tokens = model.backbone.forward_tokens(images, mask, mask_token=True)
    changed = torch.where(mask.reshape(2, 4, 4).repeat_interleave(4, 1).repeat_interleave(4, 2)[:, None],
                          torch.randn_like(images), images)
    assert torch.allclose(tokens, model.backbone.forward_tokens(changed, mask, mask_token=True), atol=1e-5)
    outputs = model({"view_0": images, "mask": mask})
    assert math.isfinite(float(outputs["loss"].detach()))


def test_simmim_target_window_reconstructs_the_locally_normalized_image():
    images = torch.rand(2, 3, 16, 16) * 4
    mask = simmim.random_cell_mask(2, (4, 4), 0.5, images.device)
    model = simmim.build_simmim(simmim.SimMIMOptions(target_window=5), tiny_vit(), 16)
    raw = simmim.build_simmim(simmim.SimMIMOptions(), tiny_vit(), 16)
    raw.load_state_dict(model.state_dict())
    with torch.no_grad():
        reconstruction = model({"view_0": images, "mask": mask})["loss"]
        tokens = raw.backbone.forward_tokens(images, mask, mask_token=True)[:, 1:]
        prediction = losses.unpatchify(raw.decoder(tokens), 4, (16, 16))
    target = losses.normalize_locally(images, 5)
    assert float(reconstruction) == pytest.approx(float(losses.simmim_loss(prediction, target, mask, 4)), rel=1e-5)
    assert float(reconstruction) != pytest.approx(float(losses.simmim_loss(prediction, images, mask, 4)), rel=1e-3)
    with pytest.raises(ValueError, match="method.target_window=4"):
        simmim.build_simmim(simmim.SimMIMOptions(target_window=4), tiny_vit(), 16)


# ---------------------------------------------------------------------------- resume


def test_state_dict_round_trip_continues_exactly():
    torch.manual_seed(1)
    first = moco_v2.build_moco_v2(moco_v2.MoCoV2Options(queue_size=8, projection_hidden_dim=8,
                                                        projection_dim=4), TinyBackbone(), 16)
    for step in range(3):
        sgd_step(first, two_views())
        first.on_step_end(step, 10)
    second = moco_v2.build_moco_v2(moco_v2.MoCoV2Options(queue_size=8, projection_hidden_dim=8,
                                                         projection_dim=4), TinyBackbone(), 16)
    second.load_state_dict(first.state_dict(), strict=True)
    batch = two_views()
    assert float(first(batch)["loss"].detach()) == pytest.approx(float(second(batch)["loss"].detach()), rel=1e-6)
    assert torch.equal(first.queue, second.queue) and int(first.queue_pointer) == int(second.queue_pointer)
