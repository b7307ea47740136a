import io
import math

import pytest
import torch
from torch import nn

from tests.trainer.training_run import OneTorchThread, tiny_config
from selfsup.trainer.checkpoint import latest_checkpoint, load_checkpoint
from selfsup.trainer.loop import train
from selfsup.methods import inpainting
from selfsup.methods.backbones import resnet18
from selfsup.methods.protocol import OptimizerStep
from selfsup.trainer.optimizers import (
    DEFAULT_STEP, LAMB, LARS, OPTIMIZERS, build_optimizer, parameter_groups, resolved_optimizer_steps,
    scale_learning_rate,
)
from selfsup.trainer.schedules import cosine_schedule


def _param(values):
    return nn.Parameter(torch.tensor(values, dtype=torch.float64))


def _lars_reference(w, g, weight_decay, eta):
    """One LARS local update computed with Python floats (You et al. 2017, Algorithm 1)."""
    w_norm = math.sqrt(sum(x * x for x in w))
    g_norm = math.sqrt(sum(x * x for x in g))
    ratio = eta * w_norm / (g_norm + weight_decay * w_norm) if w_norm > 0 and g_norm > 0 else 1.0
    return [ratio * (gi + weight_decay * wi) for wi, gi in zip(w, g)]


def test_lars_two_steps_match_hand_computation():
    lr, momentum, weight_decay, eta = 0.5, 0.9, 0.1, 0.001
    weight = _param([3.0, 4.0])
    optimizer = LARS([weight], lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta)

    w = [3.0, 4.0]
    g1 = [0.6, 0.8]
    # ||w|| = 5, ||g|| = 1: ratio = 0.001 * 5 / (1 + 0.1 * 5) = 1/300
    update1 = [(1 / 300) * (0.6 + 0.3), (1 / 300) * (0.8 + 0.4)]
    assert _lars_reference(w, g1, weight_decay, eta) == pytest.approx(update1)
    weight.grad = torch.tensor(g1, dtype=torch.float64)
    optimizer.step()
    w = [wi - lr * ui for wi, ui in zip(w, update1)]
    assert weight.tolist() == pytest.approx(w, abs=1e-12)

    g2 = [-1.0, 2.0]
    update2 = _lars_reference(w, g2, weight_decay, eta)
    buffer = [momentum * b + u for b, u in zip(update1, update2)]
    weight.grad = torch.tensor(g2, dtype=torch.float64)
    optimizer.step()
    w = [wi - lr * bi for wi, bi in zip(w, buffer)]
    assert weight.tolist() == pytest.approx(w, abs=1e-12)


def test_lars_nesterov_and_excluded_group():
    lr, momentum = 0.1, 0.9
    weight, bias = _param([1.0, 2.0, 2.0]), _param([0.5])
    optimizer = LARS([{"params": [weight], "weight_decay": 0.0},
                      {"params": [bias], "weight_decay": 0.0, "lars_exclude": True}],
                     lr=lr, momentum=momentum, eta=0.01, nesterov=True)
    weight.grad = torch.tensor([0.0, 3.0, 4.0], dtype=torch.float64)
    bias.grad = torch.tensor([2.0], dtype=torch.float64)
    optimizer.step()
    # weight: ratio = 0.01 * 3 / 5; nesterov first step: update + momentum * buffer = 1.9 * update
    ratio = 0.01 * 3 / 5
    expected_weight = [w - lr * 1.9 * ratio * g for w, g in zip((1.0, 2.0, 2.0), (0.0, 3.0, 4.0))]
    assert weight.tolist() == pytest.approx(expected_weight, abs=1e-12)
    # bias: plain SGD, no adaptation
    assert bias.tolist() == pytest.approx([0.5 - lr * 1.9 * 2.0])


def test_lars_ratio_is_one_for_zero_norms():
    zero_weight, zero_grad = _param([0.0, 0.0]), _param([1.0, 1.0])
    optimizer = LARS([zero_weight, zero_grad], lr=1.0, momentum=0.0, weight_decay=0.5, eta=0.001)
    zero_weight.grad = torch.tensor([1.0, -1.0], dtype=torch.float64)
    zero_grad.grad = torch.zeros(2, dtype=torch.float64)
    optimizer.step()
    assert zero_weight.tolist() == pytest.approx([-1.0, 1.0])      # ratio 1, no decay term (w = 0)
    assert zero_grad.tolist() == pytest.approx([0.5, 0.5])          # ratio 1, decay only


def test_lars_with_every_group_excluded_equals_sgd():
    torch.manual_seed(0)
    reference, model = nn.Linear(4, 3), nn.Linear(4, 3)
    model.load_state_dict(reference.state_dict())
    lars = LARS(model.parameters(), lr=0.1, momentum=0.9, lars_exclude=True)
    sgd = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9)
    for _ in range(3):
        inputs = torch.randn(8, 4)
        for network, optimizer in ((model, lars), (reference, sgd)):
            optimizer.zero_grad()
            network(inputs).pow(2).sum().backward()
            optimizer.step()
    for ours, theirs in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(ours, theirs)


def test_lamb_two_steps_match_hand_computation():
    lr, beta1, beta2, eps, weight_decay = 0.1, 0.9, 0.999, 1e-6, 0.01
    weight = _param([3.0, 4.0])
    optimizer = LAMB([weight], lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=weight_decay)
    w, m, v = [3.0, 4.0], [0.0, 0.0], [0.0, 0.0]
    for t, g in enumerate(([0.6, 0.8], [-0.2, 0.5]), start=1):
        m = [beta1 * mi + (1 - beta1) * gi for mi, gi in zip(m, g)]
        v = [beta2 * vi + (1 - beta2) * gi * gi for vi, gi in zip(v, g)]
        m_hat = [mi / (1 - beta1 ** t) for mi in m]
        v_hat = [vi / (1 - beta2 ** t) for vi in v]
        r = [mh / (math.sqrt(vh) + eps) + weight_decay * wi for mh, vh, wi in zip(m_hat, v_hat, w)]
        ratio = math.sqrt(sum(x * x for x in w)) / math.sqrt(sum(x * x for x in r))
        w = [wi - lr * ratio * ri for wi, ri in zip(w, r)]
        weight.grad = torch.tensor(g, dtype=torch.float64)
        optimizer.step()
        assert weight.tolist() == pytest.approx(w, abs=1e-12)


def test_lamb_excluded_group_is_adam():
    torch.manual_seed(0)
    reference, model = nn.Linear(4, 3), nn.Linear(4, 3)
    model.load_state_dict(reference.state_dict())
    lamb = LAMB(model.parameters(), lr=0.01, eps=1e-6, weight_decay=0.3, exclude_from_adaptation=True)
    adam = torch.optim.Adam(reference.parameters(), lr=0.01, eps=1e-6)
    for _ in range(3):
        inputs = torch.randn(8, 4)
        for network, optimizer in ((model, lamb), (reference, adam)):
            optimizer.zero_grad()
            network(inputs).pow(2).sum().backward()
            optimizer.step()
    for ours, theirs in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(ours, theirs)


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.norm = nn.BatchNorm2d(4)
        self.layer_norm = nn.LayerNorm(4)
        self.group_norm = nn.GroupNorm(2, 4)
        self.linear = nn.Linear(4, 2)
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)

    def forward(self, images):
        features = self.group_norm(self.norm(self.conv(images))).mean(dim=(2, 3))
        return self.linear(self.layer_norm(features))


def test_parameter_groups_split_bias_and_norm():
    model = _Net()
    groups = parameter_groups(model, weight_decay=1e-4)
    by_name = {group["name"]: group for group in groups}
    assert set(by_name) == {"decay", "no_decay"}
    decay_ids = {id(p) for p in by_name["decay"]["params"]}
    no_decay_ids = {id(p) for p in by_name["no_decay"]["params"]}
    assert decay_ids == {id(model.conv.weight), id(model.linear.weight)}
    expected_no_decay = [model.conv.bias, model.norm.weight, model.norm.bias, model.layer_norm.weight,
                         model.layer_norm.bias, model.group_norm.weight, model.group_norm.bias, model.linear.bias]
    assert no_decay_ids == {id(p) for p in expected_no_decay}
    assert by_name["decay"]["weight_decay"] == 1e-4 and by_name["decay"]["apply_weight_decay"] is True
    assert by_name["decay"]["lars_exclude"] is False and by_name["decay"]["exclude_from_adaptation"] is False
    no_decay = by_name["no_decay"]
    assert no_decay["weight_decay"] == 0.0 and no_decay["apply_weight_decay"] is False
    assert no_decay["lars_exclude"] is True and no_decay["exclude_from_adaptation"] is True

    single = parameter_groups(model, weight_decay=1e-4, exclude_bias_and_norm=False)
    assert [group["name"] for group in single] == ["decay"]
    assert len(single[0]["params"]) == 10  # all trainable parameters, frozen ones skipped


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_build_optimizer_every_name(name):
    torch.manual_seed(0)
    model = _Net()
    optimizer = build_optimizer(name, model, lr=0.1, weight_decay=1e-4, momentum=0.9, betas=[0.9, 0.99])
    assert all("name" in group and "apply_weight_decay" in group for group in optimizer.param_groups)
    before = model.linear.weight.detach().clone()
    model(torch.randn(2, 3, 6, 6)).sum().backward()
    for group in optimizer.param_groups:  # what the trainer does every step
        group["lr"] = 0.05
        if group["apply_weight_decay"]:
            group["weight_decay"] = 2e-4
    optimizer.step()
    assert not torch.equal(before, model.linear.weight)
    # the optimizer state must survive a weights_only round trip
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    buffer.seek(0)
    restored = build_optimizer(name, model, lr=0.1, weight_decay=1e-4)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert len(restored.state) == len(optimizer.state)


def test_build_optimizer_unknown_name_lists_known():
    with pytest.raises(ValueError, match="lamb, lars, sgd"):
        build_optimizer("adam_typo", _Net(), lr=0.1, weight_decay=0.0)


def test_scale_learning_rate():
    assert scale_learning_rate(0.3, 4096) == pytest.approx(4.8)
    assert scale_learning_rate(0.3, 1024, rule="sqrt") == pytest.approx(0.6)
    assert scale_learning_rate(0.3, 4096, rule="none") == pytest.approx(0.3)
    assert scale_learning_rate(1.0, 64, reference_batch_size=128) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="linear, sqrt, none"):
        scale_learning_rate(0.3, 256, rule="cubic")
    with pytest.raises(ValueError):
        scale_learning_rate(0.3, 0)


def test_parameter_groups_keep_fixed_lr_parameters_apart():
    model = _Net()
    fixed = list(model.linear.parameters())  # a "predictor": weight (decay) and bias (no decay)
    groups = {group["name"]: group for group in parameter_groups(model, 1e-4, fixed_lr_parameters=fixed)}
    assert list(groups) == ["decay", "decay_fixed_lr", "no_decay", "no_decay_fixed_lr"]
    assert [id(p) for p in groups["decay_fixed_lr"]["params"]] == [id(model.linear.weight)]
    assert [id(p) for p in groups["no_decay_fixed_lr"]["params"]] == [id(model.linear.bias)]
    assert id(model.linear.weight) not in {id(p) for p in groups["decay"]["params"]}
    assert [group["fixed_lr"] for group in groups.values()] == [False, True, False, True]
    assert groups["decay_fixed_lr"]["apply_weight_decay"] and not groups["no_decay_fixed_lr"]["apply_weight_decay"]
    with pytest.raises(ValueError, match="1 parameter"):
        parameter_groups(model, 1e-4, fixed_lr_parameters=[nn.Parameter(torch.zeros(2))])


@pytest.mark.parametrize("fixed", [True, False])
def test_simsiam_predictor_keeps_the_base_learning_rate(demo_shards, tmp_path, fixed):
    """SimSiam's paper default: the predictor's lr stays at the base value while the rest decays."""
    overrides = ["trainer.max_steps=3", "optim.warmup_epochs=0", "optim.final_lr=0.0",
                 "method.projection_hidden_dim=32", "method.projection_dim=32", "method.prediction_hidden_dim=8",
                 f"method.fixed_predictor_lr={str(fixed).lower()}"]
    config = tiny_config(demo_shards, *overrides, method="simsiam")
    with OneTorchThread():
        train(config, tmp_path)
    base = scale_learning_rate(config.optim.lr, config.data.batch_size)  # linear scaling, one process
    last = float(cosine_schedule(base, 0.0, 3)[2])  # the schedule's value at the last step
    groups = load_checkpoint(latest_checkpoint(tmp_path / "checkpoints"))["optimizer"]["param_groups"]
    lrs = {group["name"]: group["lr"] for group in groups}  # simsiam.yaml: weight decay on every parameter
    assert lrs == ({"decay": pytest.approx(last), "decay_fixed_lr": pytest.approx(base)} if fixed
                   else {"decay": pytest.approx(last)})
    assert last < 0.5 * base


def _context_encoder(adversarial_weight: float) -> inpainting.Inpainting:
    options = inpainting.InpaintingOptions(decoder_width=16, adversarial_weight=adversarial_weight,
                                           discriminator_width=8)
    return inpainting.build_inpainting(options, resnet18(), 512)


def test_optimizer_steps_default_to_one_over_every_trainable_parameter():
    model = _context_encoder(0.0)
    (step,) = resolved_optimizer_steps(model)
    assert (step.name, step.loss, step.lr_multiplier) == (DEFAULT_STEP, "loss", 1.0)
    assert [id(p) for p in step.parameters] == [id(p) for p in model.parameters()]


def test_declared_optimizer_steps_must_split_the_trainable_parameters(monkeypatch):
    model = _context_encoder(0.001)
    discriminator, generator = model.optimizer_steps()
    assert resolved_optimizer_steps(model) == [discriminator, generator]
    groups = parameter_groups(model, 1e-4, parameters=discriminator.parameters)
    assert sum(len(group["params"]) for group in groups) == len(list(model.discriminator.parameters()))
    wrong = {
        "1 in no step": [discriminator, OptimizerStep("generator", generator.parameters[1:], "loss")],
        "1 in more than one": [discriminator, OptimizerStep("generator", generator.parameters
                                                            + discriminator.parameters[:1], "loss")],
        "must be distinct": [discriminator, OptimizerStep("discriminator", generator.parameters, "loss")],
        "1 not trainable parameters": [discriminator, OptimizerStep("generator", generator.parameters
                                                                    + [nn.Parameter(torch.zeros(1))], "loss")],
    }
    for message, steps in wrong.items():
        monkeypatch.setattr(model, "optimizer_steps", lambda steps=steps: steps)
        with pytest.raises(ValueError, match=message):
            resolved_optimizer_steps(model)
    with pytest.raises(ValueError, match="not Inpainting's own"):
        parameter_groups(model, 1e-4, parameters=[nn.Parameter(torch.zeros(1))])
