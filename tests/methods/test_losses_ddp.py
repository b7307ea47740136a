"""Real 2-process DDP (gloo, CPU) against one process on the whole batch.

Each rank holds half of a fixed batch and runs a small model without batch norm wrapped in
DistributedDataParallel. For every loss we check that (a) the mean over ranks of the local
loss values equals the single-process loss on the concatenated batch (every rank's value when
the loss is global by construction), (b) the DDP-averaged parameter gradients equal the
single-process gradients, and (c) distributed statistics (DINO center, SwAV codes) match.

The same ``run_cases`` function produces both sides: in the test process torch.distributed is
not initialized, so the helpers in ``methods.distributed`` are no-ops.
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

from selfsup.methods import losses

WORLD_SIZE = 2
GLOBAL_BATCH = 8
NUM_VIEWS = 4  # 2 "global" + 2 "local" views (for DINO / SwAV multi-crop)
INPUT_DIM, HIDDEN_DIM, OUTPUT_DIM, NUM_PROTOTYPES = 6, 16, 8, 5
CASES = ["nt_xent", "barlow_twins", "vicreg", "dino", "dino_sinkhorn", "swav", "moco_v3", "nnclr"]
GLOBAL_LOSSES = {"barlow_twins"}  # identical on every rank


def make_fixture():
    """Fixed model weights and data, identical in every process."""
    generator = torch.Generator().manual_seed(1234)

    def randn(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    model = nn.Sequential(
        nn.Linear(INPUT_DIM, HIDDEN_DIM), nn.ReLU(), nn.Linear(HIDDEN_DIM, OUTPUT_DIM)
    ).double()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(randn(*parameter.shape) * 0.5)
    return {
        "state": model.state_dict(),
        "views": randn(NUM_VIEWS, GLOBAL_BATCH, INPUT_DIM),  # (V, N, in)
        "teacher": randn(OUTPUT_DIM, INPUT_DIM),  # a frozen "teacher / momentum encoder"
        "center": randn(1, OUTPUT_DIM) * 0.1,
        "prototypes": F.normalize(randn(NUM_PROTOTYPES, OUTPUT_DIM), dim=1),
    }


def make_model(state):
    model = nn.Sequential(
        nn.Linear(INPUT_DIM, HIDDEN_DIM), nn.ReLU(), nn.Linear(HIDDEN_DIM, OUTPUT_DIM)
    ).double()
    model.load_state_dict(state)
    return model


def compute_case(name, model, views, fixture):
    """Loss (and extra statistics) for one case. views: (V, n, in) local batch."""
    num_views, batch = views.shape[:2]
    out = model(views.reshape(num_views * batch, -1)).reshape(num_views, batch, -1)
    with torch.no_grad():
        teacher = views @ fixture["teacher"].T  # (V, n, out), no gradient
    extras = {}
    if name == "nt_xent":
        loss = losses.nt_xent(out[0], out[1], temperature=0.5)
    elif name == "barlow_twins":
        loss = losses.barlow_twins(out[0], out[1])
    elif name == "vicreg":
        loss = losses.vicreg(out[0], out[1])
    elif name == "dino":
        loss = losses.dino_loss(list(out), list(teacher[:2]), fixture["center"])
        extras["center"] = losses.dino_update_center(fixture["center"], teacher[:2].flatten(0, 1))
    elif name == "dino_sinkhorn":  # the codes are normalized over every rank's teacher rows
        loss = losses.dino_sinkhorn_loss(list(out), list(teacher[:2]), teacher_temperature=0.5)
    elif name == "swav":
        scores = [F.normalize(view, dim=1) @ fixture["prototypes"].T for view in out]
        loss = losses.swav_loss(scores, assignments_for=[0, 1])
        extras["codes"] = losses.sinkhorn_knopp(scores[0].detach())
    elif name == "moco_v3":
        loss = losses.moco_v3_loss(out[0], teacher[1]) + losses.moco_v3_loss(out[1], teacher[0])
    elif name == "nnclr":
        loss = losses.nnclr_loss(teacher[0], out[1])
    else:
        raise KeyError(name)
    return loss, extras


def run_cases(model, parameters_owner, views, fixture):
    results = {}
    for name in CASES:
        parameters_owner.zero_grad(set_to_none=True)
        loss, extras = compute_case(name, model, views, fixture)
        loss.backward()
        gradients = [p.grad.detach().clone() for p in parameters_owner.parameters()]
        results[name] = {"loss": loss.detach(), "gradients": gradients, **extras}
    return results


def worker(rank, world_size, init_file, output_dir):
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        fixture = make_fixture()
        model = make_model(fixture["state"])
        ddp_model = DistributedDataParallel(model)
        local = GLOBAL_BATCH // world_size
        views = fixture["views"][:, rank * local : (rank + 1) * local]
        results = run_cases(ddp_model, model, views, fixture)
        torch.save(results, os.path.join(output_dir, f"rank{rank}.pt"))
        dist.barrier()  # both ranks done before gloo is torn down (a rank leaving first aborted the other once)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    directory = tmp_path_factory.mktemp("ddp")
    # spawned children unpickle ``worker`` by importing this module as
    # ``tests.methods.test_losses_ddp``: make the repository root importable (multiprocessing
    # hands the parent's sys.path to the children)
    root = str(Path(__file__).resolve().parents[2])
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(root)
        mp.spawn(
            worker,
            args=(WORLD_SIZE, str(directory / "init"), str(directory)),
            nprocs=WORLD_SIZE,
            join=True,
        )
    per_rank = [torch.load(directory / f"rank{r}.pt") for r in range(WORLD_SIZE)]

    fixture = make_fixture()
    model = make_model(fixture["state"])
    single = run_cases(model, model, fixture["views"], fixture)
    return per_rank, single


@pytest.mark.parametrize("name", CASES)
def test_ddp_matches_single_process(outcomes, name):
    per_rank, single = outcomes
    expected = single[name]
    rank_losses = torch.stack([results[name]["loss"] for results in per_rank])
    assert torch.allclose(rank_losses.mean(), expected["loss"], atol=1e-10), (rank_losses, expected)
    if name in GLOBAL_LOSSES:
        assert torch.allclose(rank_losses, expected["loss"].expand(WORLD_SIZE), atol=1e-10)
    for results in per_rank:
        for got, want in zip(results[name]["gradients"], expected["gradients"]):
            assert torch.allclose(got, want, atol=1e-10), (got - want).abs().max()


def test_ddp_dino_center_is_global(outcomes):
    per_rank, single = outcomes
    for results in per_rank:
        assert torch.allclose(results["dino"]["center"], single["dino"]["center"], atol=1e-12)


def test_ddp_sinkhorn_codes_are_global(outcomes):
    per_rank, single = outcomes
    local = GLOBAL_BATCH // WORLD_SIZE
    for rank, results in enumerate(per_rank):
        rows = single["swav"]["codes"][rank * local : (rank + 1) * local]
        assert torch.allclose(results["swav"]["codes"], rows, atol=1e-10)
