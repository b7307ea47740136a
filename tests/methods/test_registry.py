"""One test drives every registered method: build from its shipped config, check it against the
method protocol (`methods.protocol.Method`: the members, defined by the method's own class, and
what the hooks return), train a few steps on a fixed batch from its own recipe (real DALI CPU
graph over real shards), check the loss falls and the method's state (teachers, queues, centers,
prototypes, memory banks) is in `state_dict`. Adversarial methods (and inpainting's adversarial
option, the case "inpainting+adversarial") train with one optimizer per declared step, in their
update order, as the trainer does."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from selfsup.methods.protocol import Method, OptimizerStep
from selfsup.methods.registry import METHODS, method_entry
from selfsup.pipeline.dataset import load_dataset_info
from selfsup.pipeline.loader import build_train_loader
from selfsup.trainer.config import load_config
from selfsup.trainer.model import build_model, recipe_for
from selfsup.trainer.optimizers import resolved_optimizer_steps
from tests.conftest import TINY_DVAE

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
BATCH = 8
TRAIN_SAMPLES = 120  # the train split of the `demo_shards` fixture
RESNET = ["model.backbone=resnet18", "model.small_input=false", "data.image_size=32",
          f"data.batch_size={BATCH}"]
VIT = ["model.backbone=vit_tiny", "data.image_size=32", f"data.batch_size={BATCH}"]  # 2x2 patches

# Per method: the backbone overrides plus small heads, queues and prototype counts.
OVERRIDES: dict[str, list[str]] = {
    "simclr": RESNET + ["method.projection_hidden_dim=64", "method.projection_dim=32"],
    "moco_v2": RESNET + ["method.projection_hidden_dim=64", "method.projection_dim=32",
                         "method.queue_size=4096"],
    "moco_v1": RESNET + ["method.projection_dim=32", "method.queue_size=4096"],
    "moco_v3": VIT + ["method.projection_hidden_dim=64", "method.projection_dim=32",
                      "method.prediction_hidden_dim=64"],
    "nnclr": RESNET + ["method.projection_hidden_dim=64", "method.projection_dim=32",
                       "method.prediction_hidden_dim=64", "method.support_set_size=32"],
    "byol": RESNET + ["method.projection_hidden_dim=64", "method.projection_dim=32",
                      "method.prediction_hidden_dim=64"],
    "simsiam": RESNET + ["method.projection_hidden_dim=64", "method.projection_dim=64",
                         "method.prediction_hidden_dim=16"],
    "barlow_twins": RESNET + ["method.projection_hidden_dim=64", "method.projection_dim=64"],
    "vicreg": RESNET + ["method.projection_hidden_dim=64", "method.projection_dim=64"],
    "dino": VIT + ["method.output_dim=64", "method.hidden_dim=64", "method.bottleneck_dim=16",
                   "data.recipe.local_crops=2", "data.recipe.local_size=16"],
    "swav": RESNET + ["method.projection_hidden_dim=64", "method.projection_dim=32",
                      "method.num_prototypes=8", "method.queue_size=16",
                      "method.queue_start_fraction=0.2",
                      "data.recipe.local_crops=2", "data.recipe.local_size=16"],
    "deepcluster_v2": RESNET + ["method.projection_hidden_dim=64", "method.projection_dim=32",
                                "method.num_prototypes=4", "method.num_heads=2",
                                f"method.memory_bank_size={TRAIN_SAMPLES}",
                                "data.recipe.local_crops=2", "data.recipe.local_size=16"],
    "deepcluster": RESNET + ["method.num_clusters=4", "method.pca_dim=16",
                             f"method.memory_bank_size={TRAIN_SAMPLES}"],
    "odc": RESNET + ["method.neck_hidden_dim=64", "method.embedding_dim=32", "method.num_clusters=4",
                     "method.min_cluster_size=2", "method.centroid_update_interval=2",
                     f"method.memory_bank_size={TRAIN_SAMPLES}"],
    "mae": VIT + ["method.decoder_dim=32", "method.decoder_depth=1", "method.decoder_heads=2"],
    "simmim": VIT + ["data.recipe.patch_size=16"],
    "beit": VIT + ["model.patch_size=8"],  # + method.tokenizer: the `tokenizer_run` fixture's dvae
    "dvae": TINY_DVAE,
    "rotation": RESNET + ["method.head_hidden_dim=0"],
    "jigsaw": RESNET + ["data.image_size=33", "method.num_permutations=10",
                        "data.recipe.permutation_count=10", "data.recipe.tile_size=9",
                        "method.head_hidden_dim=64"],
    "relative_location": RESNET + ["data.image_size=33", "method.head_hidden_dim=64"],
    "colorization": RESNET + ["method.head_hidden_dim=32"],
    "inpainting": RESNET + ["method.decoder_width=32"],
    "super_resolution": RESNET + ["method.decoder_width=32", "method.discriminator_width=8"],
    "denoising_autoencoder": RESNET + ["method.decoder_width=32"],
    "npid": RESNET + ["method.projection_dim=32", "method.num_negatives=16",
                      f"method.memory_bank_size={TRAIN_SAMPLES}"],
    "supervised": RESNET + ["method.num_classes=10"],  # the demo shards' 10 shape classes
}

# Variants of a method trained as their own cases: (method, overrides).
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "inpainting+adversarial": ("inpainting", OVERRIDES["inpainting"] + ["method.adversarial_weight=0.001",
                                                                        "method.discriminator_width=8"]),
}
CASES = sorted(METHODS) + sorted(VARIANTS)


def case_config(case: str, request):
    """The config of a registry test case: a method's shipped config with its small overrides, and
    method.tokenizer pointing at a freshly trained tiny dvae where one is needed."""
    name, extra = VARIANTS.get(case, (case, OVERRIDES.get(case, RESNET)))
    if name in NEEDS_TOKENIZER:
        extra = extra + [f"method.tokenizer={request.getfixturevalue('tokenizer_run')}"]
    return name, load_config(CONFIGS / f"{name}.yaml", extra)


# State that must travel in checkpoints (prefixes of state_dict keys), per method.
STATE: dict[str, list[str]] = {
    "moco_v1": ["queue", "queue_pointer", "key_backbone.", "key_projector.", "iteration"],
    "moco_v2": ["queue", "queue_pointer", "key_backbone.", "key_projector.", "momentum"],
    "moco_v3": ["momentum_backbone.", "momentum_projector.", "momentum"],
    "nnclr": ["support_set", "support_pointer"],
    "byol": ["target_backbone.", "target_projector.", "momentum"],
    "dino": ["teacher_encoder.", "teacher_head.", "center", "teacher_temperature", "momentum"],
    "swav": ["prototypes.", "queue", "queue_filled", "queue_active"],
    "deepcluster_v2": ["memory", "memory_filled", "centroids", "assignments", "samples_seen",
                       "next_kmeans_at", "kmeans_runs"],
    "deepcluster": ["head.", "memory", "memory_filled", "assignments", "cluster_weights", "projection",
                    "projection_mean", "feature_sum", "feature_outer", "feature_count", "epoch_samples",
                    "step_samples", "kmeans_runs"],
    "odc": ["neck.", "head.", "memory", "memory_filled", "assignments", "centroids", "cluster_weights",
            "epoch_samples", "step_samples", "initialized"],
    "npid": ["memory", "normalizer"],
    "mae": ["mask_token", "decoder_embed.", "decoder_pred."],
    "simmim": ["backbone.mask_token", "decoder."],
    "beit": ["tokenizer.", "backbone.mask_token", "head."],
    "dvae": ["decoder.codebook", "temperature", "kl_weight"],
    "colorization": ["bin_counts", "backbone.net.conv1.", "head."],
    "inpainting": ["decoder."],
    "inpainting+adversarial": ["decoder.", "discriminator."],
    "super_resolution": ["decoder.", "discriminator."],
    "denoising_autoencoder": ["decoder."],
}

STEPS = 8
LR = 0.05
# Smaller steps where SGD at 0.05 overshoots on one fixed batch (BN + a 4-way head; a decoder).
METHOD_LR = {"rotation": 0.01, "inpainting": 0.01, "inpainting+adversarial": 0.01, "super_resolution": 0.01,
             "denoising_autoencoder": 0.01, "deepcluster": 0.01}
# Methods whose loss only starts after a first phase: (steps of that phase, then STEPS more).
# DeepCluster-v2's, DeepCluster's and ODC's first epoch (TRAIN_SAMPLES / BATCH steps) fills the bank;
# k-means follows.
WARMUP = {"deepcluster_v2": TRAIN_SAMPLES // BATCH, "deepcluster": TRAIN_SAMPLES // BATCH,
          "odc": TRAIN_SAMPLES // BATCH}
# Methods with a memory bank need each sample's index in the split (batch key `index`).
# Batch keys a method's recipe must yield besides the views.
NEEDS_KEYS = {"mae": ["mask"], "simmim": ["mask"], "beit": ["mask"], "rotation": ["rotation_label"],
              "jigsaw": ["jigsaw_tiles", "jigsaw_label"],
              "relative_location": ["patch_a", "patch_b", "relative_label"],
              "colorization": ["lab_l", "ab_bins"],
              "inpainting": ["inpaint_input", "inpaint_target", "inpaint_mask"],
              "supervised": ["view_0", "view_1", "label"],
              "super_resolution": ["sr_input", "sr_target"],
              "denoising_autoencoder": ["denoise_input", "denoise_target"]}


# Methods that predict a tokenizer's codes: their test trains a tiny dvae first (`tokenizer_run`).
NEEDS_TOKENIZER = {"beit"}


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """The CPU is shared with DALI and other jobs; one intra-op thread avoids oversubscription."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


_BATCHES: dict[tuple, dict[str, torch.Tensor]] = {}


def first_batch(shards, recipe) -> dict[str, torch.Tensor]:
    """One batch of `recipe` from the real loader, cached per recipe for the module."""
    key = (str(shards), repr(recipe))
    if key not in _BATCHES:
        loader = build_train_loader(load_dataset_info(shards), recipe, batch_size=BATCH, seed=0,
                                    num_threads=1)
        _BATCHES[key] = next(iter(loader))
        loader.close()
    return dict(_BATCHES[key])


def test_unknown_method_lists_known_ones():
    with pytest.raises(KeyError, match="known methods: .*simclr"):
        method_entry("nope")


# The protocol's members besides `backbone`, each defined by the method's own class (no base class).
HOOKS = ("forward", "on_step_end", "teacher_backbone", "fixed_lr_parameters", "last_layer_parameters",
         "optimizer_steps")
# What the hooks name, per method: a momentum teacher, fixed-lr parameters, a frozen-at-first last layer.
TEACHERS = {"moco_v1", "moco_v2", "moco_v3", "byol", "dino"}
FIXED_LR = {"simsiam"}
LAST_LAYER = {"dino", "swav"}
# Cases trained by a discriminator's and a generator's optimizer in turn; every other returns [] (one
# default optimizer over every trainable parameter, minimising "loss").
ADVERSARIAL = {"super_resolution", "inpainting+adversarial"}


def test_a_module_without_the_hooks_is_not_a_method():
    plain = nn.Linear(2, 2)
    plain.backbone = nn.Identity()
    assert not isinstance(plain, Method)


@pytest.mark.parametrize("case", CASES)
def test_every_method_satisfies_the_method_protocol(case, request):
    torch.manual_seed(0)
    name, config = case_config(case, request)
    model = build_model(config)
    assert isinstance(model, Method)
    assert [hook for hook in HOOKS if hook not in vars(type(model))] == []
    assert model.backbone.kind in ("resnet", "vit", "conv")

    teacher = model.teacher_backbone()
    assert (teacher is not None) == (name in TEACHERS)
    if teacher is not None:
        assert isinstance(teacher, nn.Module) and teacher is not model.backbone
        assert list(teacher.state_dict()) == list(model.backbone.state_dict())
        assert any(module is teacher for module in model.modules())  # so it travels in state_dict
        assert not any(parameter.requires_grad for parameter in teacher.parameters())

    own = {id(parameter) for parameter in model.parameters()}
    for hook, named in (("fixed_lr_parameters", FIXED_LR), ("last_layer_parameters", LAST_LAYER)):
        parameters = getattr(model, hook)()
        assert isinstance(parameters, list) and bool(parameters) == (name in named), hook
        assert all(isinstance(p, nn.Parameter) and id(p) in own for p in parameters), hook
    assert model.on_step_end(0, 10) is None

    steps = model.optimizer_steps()
    assert isinstance(steps, list) and bool(steps) == (case in ADVERSARIAL)
    if steps:  # discriminator first, then the generator with the backbone; together every trainable parameter once
        assert [(step.name, step.loss) for step in steps] == [("discriminator", "discriminator_loss"),
                                                               ("generator", "loss")]
        assert all(isinstance(step, OptimizerStep) for step in steps)
        generator = {id(p) for p in steps[1].parameters}
        assert {id(p) for p in model.backbone.parameters()} <= generator
        assert not generator & {id(p) for p in steps[0].parameters}
        assert resolved_optimizer_steps(model) == steps  # the trainer's check that they split the parameters


def test_every_method_has_a_config_and_test_overrides():
    assert all(name in METHODS for name, _ in VARIANTS.values())
    for name in METHODS:
        assert (CONFIGS / f"{name}.yaml").is_file(), f"configs/{name}.yaml is missing"
        assert name in OVERRIDES, f"add small overrides for {name} to OVERRIDES"
        assert load_config(CONFIGS / f"{name}.yaml").method.name == name


def optimizers_for(model: nn.Module, lr: float) -> list[tuple[dict, str, torch.optim.Optimizer]]:
    """(forward arguments, loss key, SGD) per optimizer step of `model`, as the trainer steps them."""
    steps = model.optimizer_steps()
    if not steps:
        return [({}, "loss", torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr, momentum=0.9))]
    return [({"step": step.name}, step.loss, torch.optim.SGD(step.parameters, lr=lr * step.lr_multiplier, momentum=0.9))
            for step in steps]


@pytest.mark.parametrize("case", CASES)
def test_every_method_trains_on_its_recipe(case, demo_shards, request):
    name, config = case_config(case, request)
    entry = method_entry(name)
    recipe = recipe_for(config)
    batch = first_batch(demo_shards, recipe)
    missing = [key for key in NEEDS_KEYS.get(name, []) if key not in batch]
    if missing:  # the recipe is declared, its DALI graph has not landed yet
        pytest.skip(f"recipe {entry.recipe!r} does not yield {missing} yet (pipeline)")
    assert "index" in batch  # the memory-bank rows of NPID, DeepCluster(-v2) and ODC come from the loader

    torch.manual_seed(0)
    model = build_model(config)
    model.train()
    optimizers = optimizers_for(model, METHOD_LR.get(case, LR))
    losses, other_losses = [], []
    warmup = WARMUP.get(case, 0)
    total = warmup + STEPS
    for step in range(total):
        for arguments, loss_key, optimizer in optimizers:
            outputs = model(batch, **arguments)
            assert loss_key in outputs and outputs[loss_key].ndim == 0
            assert torch.isfinite(outputs[loss_key]), f"{case}: non-finite {loss_key} at step {step}"
            assert all(not value.requires_grad for key, value in outputs.items() if key != loss_key)
            optimizer.zero_grad()
            outputs[loss_key].backward()
            optimizer.step()
            (losses if loss_key == "loss" else other_losses).append(float(outputs[loss_key].detach()))
        model.on_step_end(step, total)
    losses = losses[warmup:]
    assert min(losses[-3:]) < losses[0], f"{case}: loss did not fall on a fixed batch: {losses}"
    assert len(other_losses) == (total if case in ADVERSARIAL else 0)
    state = model.state_dict()
    assert any(key.startswith("backbone.") for key in state)
    for prefix in STATE.get(case, []):
        assert any(key.startswith(prefix) for key in state), f"{case}: {prefix!r} not in state_dict"
