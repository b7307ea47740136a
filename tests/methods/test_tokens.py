"""Masked image modeling with visual tokens, on tiny networks: the dvae tokenizer learns to
reconstruct with a spread-out codebook, its relaxation temperature and KL weight follow DALL-E's
schedules from their buffers; BEiT's targets are the tokenizer's argmax codes at exactly the
masked positions, computed in float32, and the tokenizer stays frozen in eval mode."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from selfsup.methods.beit import BEiTOptions, build_beit
from selfsup.methods.discrete_vae import dvae_encoder
from selfsup.methods.dvae import DVAE
from selfsup.methods.losses import codebook_usage, dvae_loss
from tests.methods.tiny_models import TinyBackbone, sgd_step, tiny_vit


def palette_images(generator: torch.Generator, batch: int, palette: torch.Tensor, cells: int = 4,
                   cell: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Images of cells x cells flat squares of `cell` px, each one of the palette's colours drawn at
    random: (B, 3, cells * cell, cells * cell), and the colour index of each cell (B, cells * cells)."""
    colours = torch.randint(0, len(palette), (batch, cells, cells), generator=generator)
    images = palette[colours].permute(0, 3, 1, 2)  # (B, 3, cells, cells)
    return images.repeat_interleave(cell, 2).repeat_interleave(cell, 3), colours.flatten(1)


def dvae(codebook_size: int = 8, hidden_dim: int = 8, **schedule) -> DVAE:
    options = {"temperature": 1.0, "final_temperature": 1 / 16, "temperature_anneal_fraction": 1.0,
               "kl_weight": 0.02, "kl_warmup_fraction": 0.1} | schedule
    return DVAE(dvae_encoder(4, codebook_size, hidden_dim), **options)


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """The CPU is shared; one intra-op thread keeps the tiny trainings fast and repeatable."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def train_on_palette(kl_weight: float, steps: int = 200) -> tuple[float, torch.Tensor, torch.Tensor]:
    """A dvae of 16 codes trained on images of four flat colours per 4 px cell (Adam, batch 16);
    returns the held-out error of the argmax codes' reconstruction relative to before, and the
    held-out codes (B, 16) with the colour of each cell (B, 16)."""
    torch.manual_seed(0)
    palette = torch.rand(4, 3) * 2 - 1
    model = dvae(codebook_size=16, hidden_dim=32, kl_weight=kl_weight)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    held_out, colours = palette_images(torch.Generator().manual_seed(100), 128, palette)

    def hard_error() -> float:
        with torch.no_grad():
            return float(F.mse_loss(model.reconstruct(held_out), held_out))

    before, generator = hard_error(), torch.Generator().manual_seed(200)
    for step in range(steps):
        outputs = model({"view_0": palette_images(generator, 16, palette)[0]})
        optimizer.zero_grad()
        outputs["loss"].backward()
        optimizer.step()
        model.on_step_end(step, steps)
    with torch.no_grad():
        codes = model.backbone.codes(held_out)
    return hard_error() / before, codes, colours


def test_dvae_reconstructs_from_a_codebook_it_keeps_in_use():
    """The argmax codes decode back to the image, tell the colours apart, and spread over more codes
    than there are colours; without the KL term towards the uniform prior they collapse onto fewer
    codes than colours (DALL-E's reason for the term). Observed over seeds 0-3: error ratio
    0.02-0.13, perplexity 6.7-9.6 with the KL term, 2.0-3.4 without."""
    ratio, codes, colours = train_on_palette(kl_weight=0.02)
    assert ratio < 0.35
    perplexity, _ = codebook_usage(codes, 16)
    assert float(perplexity) > 4 and codes.unique().numel() >= 8
    # a code mostly stands for one colour: the cells of each code share their most common colour
    agreeing = sum(int(torch.bincount(colours[codes == code]).max()) for code in codes.unique())
    assert agreeing / codes.numel() > 0.6

    _, collapsed_codes, _ = train_on_palette(kl_weight=0.0)
    collapsed, _ = codebook_usage(collapsed_codes, 16)
    assert float(collapsed) < 4 < float(perplexity)


def test_dvae_schedules_drive_the_relaxation():
    """tau from 1 to 1/16 with a cosine over the first half, beta linear from 0 over the first 20%;
    the step's loss is the ELB of the decoder on a Gumbel-softmax sample at that tau and beta."""
    torch.manual_seed(0)
    model = dvae(temperature_anneal_fraction=0.5, kl_weight=0.3, kl_warmup_fraction=0.2)
    images = torch.randn(2, 3, 8, 8)
    total = 10
    for step in range(total):
        expected_tau = 1 / 16 + (1 - 1 / 16) * (1 + math.cos(math.pi * step / 5)) / 2 if step < 5 else 1 / 16
        expected_beta = 0.3 * step / 2 if step < 2 else 0.3
        assert float(model.temperature) == pytest.approx(expected_tau, rel=1e-6)
        assert float(model.kl_weight) == pytest.approx(expected_beta, rel=1e-6)
        torch.manual_seed(step)
        outputs = model({"view_0": images})
        torch.manual_seed(step)
        with torch.no_grad():
            logits = model.backbone.logits(images)
            relaxed = F.gumbel_softmax(logits, tau=expected_tau, dim=1)
            expected = dvae_loss(model.decoder(relaxed), images, logits, expected_beta)[0]
        assert float(outputs["loss"].detach()) == pytest.approx(float(expected), rel=1e-5)
        assert float(outputs["temperature"]) == pytest.approx(expected_tau, rel=1e-6)
        model.on_step_end(step, total)


def test_dvae_encoder_learns_through_the_relaxed_codes():
    model = dvae()
    model({"view_0": torch.randn(2, 3, 8, 8)})["loss"].backward()
    assert float(model.backbone.to_logits.weight.grad.abs().sum()) > 0  # no straight-through needed
    assert float(model.decoder.codebook.grad.abs().sum()) > 0


def test_dvae_grid_is_the_vit_patch_grid():
    encoder, vit = dvae_encoder(4, 16, 8), tiny_vit()  # 16 px images, 4 px patches
    images = torch.randn(2, 3, 16, 16)
    assert encoder.codes(images).shape == (2, vit.num_patches)
    assert encoder.logits(images).shape == (2, 16, 4, 4)
    assert encoder(images).shape == (2, encoder.feature_dim)
    with pytest.raises(ValueError, match="power of two"):
        dvae_encoder(6, 16, 8)
    with pytest.raises(ValueError, match="dvae_encoder"):
        DVAE(TinyBackbone(), temperature=1.0, final_temperature=0.5, temperature_anneal_fraction=1.0,
             kl_weight=0.0, kl_warmup_fraction=0.0)


def beit_model(codebook_size: int = 16):
    torch.manual_seed(0)
    return build_beit(BEiTOptions(), tiny_vit(), 16, dvae_encoder(4, codebook_size, 8))


MASK = torch.tensor([[1, 1, 0, 0] * 2 + [0] * 8, [0] * 10 + [1] * 6, [0, 1] * 8], dtype=torch.bool)


def test_beit_targets_are_the_tokenizers_argmax_codes_at_the_masked_positions():
    model = beit_model()
    images = torch.randn(3, 3, 16, 16)
    outputs = model({"view_0": images, "mask": MASK})
    with torch.no_grad():
        logits = model.tokenizer.to_logits(model.tokenizer.forward_features(images))  # (B, K, 4, 4)
        tokens = model.backbone.forward_tokens(images, MASK, mask_token=True)[:, 1:]  # (B, 16, D)
    total, count = 0.0, 0
    for b in range(3):
        for n in range(16):
            target = int(logits[b, :, n // 4, n % 4].argmax())
            assert int(model.tokenize(images)[b, n]) == target
            if MASK[b, n]:
                total -= float(F.log_softmax(model.head(tokens[b, n]), dim=0)[target])
                count += 1
    assert count == int(MASK.sum())
    assert float(outputs["loss"].detach()) == pytest.approx(total / count, rel=1e-5)
    assert float(outputs["mask_ratio"]) == pytest.approx(count / 48)


def test_beit_tokenizes_in_float32_under_autocast():
    model = beit_model(codebook_size=64)
    images = torch.randn(4, 3, 16, 16)
    exact = model.tokenize(images)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        assert torch.equal(model.tokenize(images), exact)


def test_beit_tokenizer_stays_frozen_in_eval_mode_and_in_the_state():
    model = beit_model()
    model.train()
    assert model.backbone.training and not model.tokenizer.training
    assert not any(parameter.requires_grad for parameter in model.tokenizer.parameters())
    before = {key: value.clone() for key, value in model.tokenizer.state_dict().items()}
    head_before = model.head.weight.clone()
    for _ in range(3):
        sgd_step(model, {"view_0": torch.randn(3, 3, 16, 16), "mask": MASK})
    assert all(parameter.grad is None for parameter in model.tokenizer.parameters())
    assert all(torch.equal(before[key], value) for key, value in model.tokenizer.state_dict().items())
    assert not torch.equal(head_before, model.head.weight)
    assert {f"tokenizer.{key}" for key in before} <= set(model.state_dict())  # travels in checkpoints


def test_beit_refuses_a_tokenizer_of_another_grid_and_a_resnet():
    with pytest.raises(ValueError, match="model.patch_size=4"):
        build_beit(BEiTOptions(), tiny_vit(), 16, dvae_encoder(8, 16, 8))
    with pytest.raises(ValueError, match="needs a ViT"):
        build_beit(BEiTOptions(), TinyBackbone(), 16, dvae_encoder(4, 16, 8))
    with pytest.raises(ValueError, match="tokenizer_codebook_size=32"):
        build_beit(BEiTOptions(tokenizer_codebook_size=32), tiny_vit(), 16, dvae_encoder(4, 16, 8))
