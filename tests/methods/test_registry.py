"""One test drives every registered method: build from its shipped config, check it against the
method protocol (`methods.protocol.Method`: the members, defined by the method's own class, and
what the hooks return), train a few steps on a fixed batch from its own recipe (real DALI CPU
graph over real shards), check the loss falls and the method's state (teachers, queues, centers,
prototypes, memory banks) is in `state_dict`."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from selfsup.methods.protocol import Method
from selfsup.methods.registry import METHODS, method_entry
from selfsup.pipeline.dataset import load_dataset_info
from selfsup.pipeline.loader import build_train_loader
from selfsup.trainer.config import load_config
from selfsup.trainer.model import build_model, recipe_for
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
    "npid": RESNET + ["method.projection_dim=32", "method.num_negatives=16",
                      f"method.memory_bank_size={TRAIN_SAMPLES}"],
}

# State that must travel in checkpoints (prefixes of state_dict keys), per method.
STATE: dict[str, list[str]] = {
    "moco_v2": ["queue", "queue_pointer", "key_backbone.", "key_projector.", "momentum"],
    "moco_v3": ["momentum_backbone.", "momentum_projector.", "momentum"],
    "nnclr": ["support_set", "support_pointer"],
    "byol": ["target_backbone.", "target_projector.", "momentum"],
    "dino": ["teacher_encoder.", "teacher_head.", "center", "teacher_temperature", "momentum"],
    "swav": ["prototypes.", "queue", "queue_filled", "queue_active"],
    "deepcluster_v2": ["memory", "memory_filled", "centroids", "assignments", "samples_seen",
                       "next_kmeans_at", "kmeans_runs"],
    "npid": ["memory", "normalizer"],
    "mae": ["mask_token", "decoder_embed.", "decoder_pred."],
    "simmim": ["backbone.mask_token", "decoder."],
    "beit": ["tokenizer.", "backbone.mask_token", "head."],
    "dvae": ["decoder.codebook", "temperature", "kl_weight"],
    "colorization": ["bin_counts", "backbone.net.conv1.", "head."],
    "inpainting": ["decoder."],
}

STEPS = 8
LR = 0.05
# Smaller steps where SGD at 0.05 overshoots on one fixed batch (BN + a 4-way head; a decoder).
METHOD_LR = {"rotation": 0.01, "inpainting": 0.01}
# Methods whose loss only starts after a first phase: (steps of that phase, then STEPS more).
# DeepCluster-v2's first epoch (TRAIN_SAMPLES / BATCH steps) fills the bank; k-means follows.
WARMUP = {"deepcluster_v2": TRAIN_SAMPLES // BATCH}
# Methods with a memory bank need each sample's index in the split (batch key `index`).
# Batch keys a method's recipe must yield besides the views.
NEEDS_KEYS = {"mae": ["mask"], "simmim": ["mask"], "beit": ["mask"], "rotation": ["rotation_label"],
              "jigsaw": ["jigsaw_tiles", "jigsaw_label"],
              "relative_location": ["patch_a", "patch_b", "relative_label"],
              "colorization": ["lab_l", "ab_bins"],
              "inpainting": ["inpaint_input", "inpaint_target", "inpaint_mask"]}


# Methods that predict a tokenizer's codes: their test trains a tiny dvae first (`tokenizer_run`).
NEEDS_TOKENIZER = {"beit"}


def overrides(name: str, request) -> list[str]:
    """OVERRIDES[name], pointing method.tokenizer at a freshly trained tiny dvae where one is needed."""
    if name in NEEDS_TOKENIZER:
        return OVERRIDES[name] + [f"method.tokenizer={request.getfixturevalue('tokenizer_run')}"]
    return OVERRIDES[name]


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
HOOKS = ("forward", "on_step_end", "teacher_backbone", "fixed_lr_parameters", "last_layer_parameters")
# What the hooks name, per method: a momentum teacher, fixed-lr parameters, a frozen-at-first last layer.
TEACHERS = {"moco_v2", "moco_v3", "byol", "dino"}
FIXED_LR = {"simsiam"}
LAST_LAYER = {"dino", "swav"}


def test_a_module_without_the_hooks_is_not_a_method():
    plain = nn.Linear(2, 2)
    plain.backbone = nn.Identity()
    assert not isinstance(plain, Method)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_satisfies_the_method_protocol(name, request):
    torch.manual_seed(0)
    model = build_model(load_config(CONFIGS / f"{name}.yaml", overrides(name, request)))
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


def test_every_method_has_a_config_and_test_overrides():
    for name in METHODS:
        assert (CONFIGS / f"{name}.yaml").is_file(), f"configs/{name}.yaml is missing"
        assert name in OVERRIDES, f"add small overrides for {name} to OVERRIDES"
        assert load_config(CONFIGS / f"{name}.yaml").method.name == name


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_trains_on_its_recipe(name, demo_shards, request):
    config = load_config(CONFIGS / f"{name}.yaml", overrides(name, request))
    entry = method_entry(name)
    recipe = recipe_for(config)
    batch = first_batch(demo_shards, recipe)
    missing = [key for key in NEEDS_KEYS.get(name, []) if key not in batch]
    if missing:  # the recipe is declared, its DALI graph has not landed yet
        pytest.skip(f"recipe {entry.recipe!r} does not yield {missing} yet (pipeline)")
    assert "index" in batch  # NPID's and DeepCluster's memory-bank rows come from the loader

    torch.manual_seed(0)
    model = build_model(config)
    model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad],
                                lr=METHOD_LR.get(name, LR), momentum=0.9)
    losses = []
    warmup = WARMUP.get(name, 0)
    total = warmup + STEPS
    for step in range(total):
        outputs = model(batch)
        assert "loss" in outputs and outputs["loss"].ndim == 0
        assert torch.isfinite(outputs["loss"]), f"{name}: non-finite loss at step {step}"
        assert all(not value.requires_grad for key, value in outputs.items() if key != "loss")
        optimizer.zero_grad()
        outputs["loss"].backward()
        optimizer.step()
        model.on_step_end(step, total)
        losses.append(float(outputs["loss"].detach()))
    losses = losses[warmup:]
    assert min(losses[-3:]) < losses[0], f"{name}: loss did not fall on a fixed batch: {losses}"
    state = model.state_dict()
    assert any(key.startswith("backbone.") for key in state)
    for prefix in STATE.get(name, []):
        assert any(key.startswith(prefix) for key in state), f"{name}: {prefix!r} not in state_dict"
