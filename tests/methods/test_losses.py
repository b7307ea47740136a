"""Every loss against a reference written independently here, loop by loop from the paper /
the authors' code (float64, single process)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from selfsup.methods import losses


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def randn(*shape):
    return torch.randn(*shape, dtype=torch.float64)


# ------------------------------------------------------------------------------ contrastive


def reference_nt_xent(z1, z2, temperature):
    samples = [F.normalize(z, dim=0) for z in torch.cat([z1, z2])]
    n = z1.shape[0]
    total = 0.0
    for a in range(2 * n):
        positive = (a + n) % (2 * n)
        numerator = torch.exp(samples[a] @ samples[positive] / temperature)
        denominator = sum(
            torch.exp(samples[a] @ samples[c] / temperature) for c in range(2 * n) if c != a
        )
        total = total - torch.log(numerator / denominator)
    return total / (2 * n)


@pytest.mark.parametrize("temperature", [0.5, 0.1])
def test_nt_xent_matches_loop(temperature):
    z1, z2 = randn(6, 5), randn(6, 5)
    expected = reference_nt_xent(z1, z2, temperature)
    assert torch.allclose(losses.nt_xent(z1, z2, temperature), expected, atol=1e-10)


def test_nt_xent_default_temperature_and_scale_invariance():
    z1, z2 = randn(4, 8), randn(4, 8)
    assert torch.allclose(losses.nt_xent(z1, z2), reference_nt_xent(z1, z2, 0.5))
    assert torch.allclose(losses.nt_xent(3 * z1, 0.5 * z2), losses.nt_xent(z1, z2))


def test_nt_xent_gradients_flow_to_both_views():
    z1, z2 = randn(4, 8).requires_grad_(), randn(4, 8).requires_grad_()
    losses.nt_xent(z1, z2).backward()
    assert z1.grad.abs().sum() > 0 and z2.grad.abs().sum() > 0


def test_infonce_matches_loop():
    q, k, queue = randn(5, 4), randn(5, 4), randn(7, 4)
    tau = 0.2
    qn, kn, negn = F.normalize(q, dim=1), F.normalize(k, dim=1), F.normalize(queue, dim=1)
    expected = 0.0
    for i in range(5):
        positive = math.exp(float(qn[i] @ kn[i]) / tau)
        negatives = sum(math.exp(float(qn[i] @ negn[j]) / tau) for j in range(7))
        expected += -math.log(positive / (positive + negatives))
    expected /= 5
    assert losses.infonce(q, k, queue) == pytest.approx(expected, abs=1e-10)


def test_moco_v3_loss_matches_formula():
    q, k = randn(6, 4), randn(6, 4)
    tau = 0.2
    qn, kn = F.normalize(q, dim=1), F.normalize(k, dim=1)
    expected = 0.0
    for i in range(6):
        logits = [float(qn[i] @ kn[j]) / tau for j in range(6)]
        expected += -(logits[i] - math.log(sum(math.exp(v) for v in logits)))
    expected = expected / 6 * 2 * tau
    assert losses.moco_v3_loss(q, k, tau) == pytest.approx(expected, abs=1e-10)


def test_nnclr_loss_matches_formula():
    neighbours, predictions = randn(5, 4), randn(5, 4)
    tau = 0.1
    nn_, p = F.normalize(neighbours, dim=1), F.normalize(predictions, dim=1)
    expected = 0.0
    for i in range(5):
        logits = [float(nn_[i] @ p[j]) / tau for j in range(5)]
        expected += -(logits[i] - math.log(sum(math.exp(v) for v in logits)))
    assert losses.nnclr_loss(neighbours, predictions, tau) == pytest.approx(expected / 5)


def test_npid_nce_loss_matches_loop():
    # the official NCECriterion, sample by sample: P = exp(s / tau) / Z, h = P / (P + M / n)
    positive, negative = randn(3), randn(3, 5)
    normalizer, n, tau = 7.5, 40, 0.5
    total = 0.0
    for b in range(3):
        p_pos = math.exp(float(positive[b]) / tau) / normalizer
        term = -math.log(p_pos / (p_pos + 5 / n))
        for j in range(5):
            p_neg = math.exp(float(negative[b, j]) / tau) / normalizer
            term -= math.log(1 - p_neg / (p_neg + 5 / n))
        total += term
    loss = losses.npid_nce_loss(positive, negative, normalizer, n, temperature=tau)
    assert math.isclose(float(loss), total / 3, rel_tol=1e-9)


def test_npid_nce_loss_prefers_the_own_entry():
    positive = torch.ones(4, dtype=torch.float64)
    low = losses.npid_nce_loss(positive, -torch.ones(4, 8, dtype=torch.float64), 10.0, 100, 0.1)
    high = losses.npid_nce_loss(-positive, torch.ones(4, 8, dtype=torch.float64), 10.0, 100, 0.1)
    assert float(low) < float(high)


# ------------------------------------------------------------------------------ bootstrap


def test_negative_cosine_value_and_stop_gradient():
    p, z = randn(5, 6).requires_grad_(), randn(5, 6).requires_grad_()
    pd, zd = p.detach(), z.detach()
    expected = -sum(float(pd[i] @ zd[i]) / float(pd[i].norm() * zd[i].norm()) for i in range(5)) / 5
    loss = losses.negative_cosine(p, z)
    assert loss.item() == pytest.approx(expected)
    loss.backward()
    assert z.grad is None and p.grad.abs().sum() > 0
    # BYOL's form: ||p/|p| - z/|z| ||^2 = 2 - 2 cos
    byol = (F.normalize(pd, dim=1) - F.normalize(zd, dim=1)).pow(2).sum(1).mean()
    assert byol.item() == pytest.approx(2 + 2 * loss.item())


def reference_dino(student_views, teacher_views, center, tau_s, tau_t):
    total, pairs = 0.0, 0
    for t_index, teacher in enumerate(teacher_views):
        for s_index, student in enumerate(student_views):
            if s_index == t_index:
                continue
            batch_mean = 0.0
            for b in range(teacher.shape[0]):
                target = torch.exp((teacher[b] - center[0]) / tau_t)
                target = target / target.sum()
                log_pred = student[b] / tau_s - torch.logsumexp(student[b] / tau_s, dim=0)
                batch_mean += float(-(target * log_pred).sum())
            total += batch_mean / teacher.shape[0]
            pairs += 1
    return total / pairs


def test_dino_loss_matches_loop_for_lists_and_stacked():
    batch, k = 3, 7
    students = [randn(batch, k) for _ in range(4)]  # 2 global + 2 local
    teachers = [randn(batch, k) for _ in range(2)]
    center = randn(1, k) * 0.1
    expected = reference_dino(students, teachers, center, 0.1, 0.04)
    assert float(losses.dino_loss(students, teachers, center)) == pytest.approx(expected)
    stacked = losses.dino_loss(torch.cat(students), torch.cat(teachers), center)
    assert float(stacked) == pytest.approx(expected)


def test_dino_loss_no_teacher_gradient():
    students = randn(6, 5).requires_grad_()
    teachers = randn(4, 5).requires_grad_()
    losses.dino_loss(students, teachers, torch.zeros(1, 5)).backward()
    assert teachers.grad is None and students.grad.abs().sum() > 0


def reference_sinkhorn_teacher(teacher, tau_t, iterations=3):
    """DINOv2's sinkhorn_knopp_teacher, written out: (N, K) logits -> (N, K) targets."""
    q = torch.exp(teacher / tau_t).T
    samples, prototypes = q.shape[1], q.shape[0]
    q = q / q.sum()
    for _ in range(iterations):
        q = q / q.sum(dim=1, keepdim=True) / prototypes
        q = q / q.sum(dim=0, keepdim=True) / samples
    return (q * samples).T


def test_dino_sinkhorn_loss_matches_dinov2_reference():
    batch, k, tau_s, tau_t = 3, 7, 0.1, 0.07
    students = [randn(batch, k) for _ in range(4)]
    teachers = [randn(batch, k) * 0.3 for _ in range(2)]
    targets = reference_sinkhorn_teacher(torch.cat(teachers), tau_t).split(batch)
    # every prototype gets an equal share of the 2 * batch teacher rows; each row sums to 1
    codes = torch.cat(targets)
    assert torch.allclose(codes.sum(dim=1), torch.ones(2 * batch, dtype=torch.float64))
    expected, pairs = 0.0, 0
    for t_index, target in enumerate(targets):
        for s_index, student in enumerate(students):
            if s_index != t_index:
                expected += float(-(target * F.log_softmax(student / tau_s, dim=1)).sum(dim=1).mean())
                pairs += 1
    expected /= pairs
    got = losses.dino_sinkhorn_loss(students, teachers, tau_s, tau_t)
    assert float(got) == pytest.approx(expected, rel=1e-9)
    stacked = losses.dino_sinkhorn_loss(torch.cat(students), torch.cat(teachers), tau_s, tau_t)
    assert float(stacked) == pytest.approx(expected, rel=1e-9)
    # not the mean-centered loss: a different target
    assert abs(float(losses.dino_loss(students, teachers, torch.zeros(1, k), tau_s, tau_t)) - expected) > 1e-3


def test_dino_sinkhorn_targets_share_the_outputs_when_one_dominates():
    """The collapse DINO's running center prevents over time, Sinkhorn-Knopp prevents in one
    batch: a teacher that puts one output far above the others for every image still hands each
    output about its fair share of the batch (32 images / 16 outputs = 2; exactly 2 as the
    iterations converge), and each image a target that sums to 1."""
    generator = torch.Generator().manual_seed(0)
    teacher = torch.randn(32, 16, generator=generator, dtype=torch.float64) * 0.5
    teacher[:, 0] += 3.0
    plain = F.softmax(teacher / 0.04, dim=1)
    assert float(plain[:, 0].mean()) > 0.95  # uncentered: every target is output 0
    targets = losses.sinkhorn_knopp(teacher, epsilon=0.04)  # the 3 iterations DINOv2 uses
    shares = targets.sum(dim=0)
    assert float(shares[0]) < 4.0 and float(shares.min()) > 0.5, shares
    assert torch.allclose(targets.sum(dim=1), torch.ones(32, dtype=torch.float64))
    converged = losses.sinkhorn_knopp(teacher, epsilon=0.04, iterations=50).sum(dim=0)
    assert torch.allclose(converged, torch.full((16,), 2.0, dtype=torch.float64), atol=0.05), converged
    # and far-apart logits (an unnormalized last layer) do not underflow into NaN
    spread = losses.sinkhorn_knopp(teacher * 100, epsilon=0.04)
    assert torch.isfinite(spread).all() and torch.allclose(spread.sum(dim=1), torch.ones(32, dtype=torch.float64))


def test_dino_sinkhorn_loss_no_teacher_gradient():
    students = randn(6, 5).requires_grad_()
    teachers = randn(4, 5).requires_grad_()
    losses.dino_sinkhorn_loss(students, teachers).backward()
    assert teachers.grad is None and students.grad.abs().sum() > 0


def test_dino_update_center():
    center, teacher = randn(1, 5), randn(8, 5)
    expected = 0.9 * center + 0.1 * teacher.mean(dim=0, keepdim=True)
    assert torch.allclose(losses.dino_update_center(center, teacher), expected)
    split = losses.dino_update_center(center, list(teacher.chunk(2)), momentum=0.9)
    assert torch.allclose(split, expected)


# ------------------------------------------------------------------------------ redundancy


def test_barlow_twins_matches_official_formulation():
    n, d, lam = 8, 5, 5e-3
    z1, z2 = randn(n, d), randn(n, d)
    bn = torch.nn.BatchNorm1d(d, affine=False, dtype=torch.float64).train()
    c = bn(z1).T @ bn(z2) / n
    expected = 0.0
    for i in range(d):
        for j in range(d):
            expected += (1 - c[i, j]) ** 2 if i == j else lam * c[i, j] ** 2
    assert float(losses.barlow_twins(z1, z2)) == pytest.approx(float(expected), rel=1e-9)


def test_vicreg_matches_official_formulation():
    n, d = 10, 6
    z1, z2 = randn(n, d), randn(n, d) * 0.3
    invariance = sum(float((z1[i, j] - z2[i, j]) ** 2) for i in range(n) for j in range(d)) / (n * d)
    variance = 0.0
    covariance = 0.0
    for z in (z1, z2):
        mean = z.mean(0)
        centered = z - mean
        std = torch.sqrt((centered**2).sum(0) / (n - 1) + 1e-4)
        variance += float(torch.clamp(1 - std, min=0).mean()) / 2
        cov = centered.T @ centered / (n - 1)
        covariance += sum(float(cov[i, j]) ** 2 for i in range(d) for j in range(d) if i != j) / d
    terms = losses.vicreg_terms(z1, z2)
    assert float(terms["invariance"]) == pytest.approx(invariance)
    assert float(terms["variance"]) == pytest.approx(variance)
    assert float(terms["covariance"]) == pytest.approx(covariance)
    expected = 25 * invariance + 25 * variance + covariance
    assert float(losses.vicreg(z1, z2)) == pytest.approx(expected)


# ------------------------------------------------------------------------------ clustering


def reference_sinkhorn(scores, epsilon, iterations):
    q = torch.exp(scores / epsilon).T.clone()  # K x B, no stabilisation
    k, b = q.shape
    q /= q.sum()
    for _ in range(iterations):
        for row in range(k):
            q[row] /= q[row].sum() * k
        for column in range(b):
            q[:, column] /= q[:, column].sum() * b
    return (q * b).T


def test_sinkhorn_matches_official_iterations():
    scores = F.normalize(randn(6, 8), dim=1) @ F.normalize(randn(4, 8), dim=1).T  # (6, 4)
    codes = losses.sinkhorn_knopp(scores, epsilon=0.05, iterations=3)
    assert torch.allclose(codes, reference_sinkhorn(scores, 0.05, 3), atol=1e-10)
    assert torch.allclose(codes.sum(1), torch.ones(6, dtype=torch.float64))
    # with many iterations every prototype gets B / K of the mass
    many = losses.sinkhorn_knopp(scores, iterations=500)
    assert torch.allclose(many.sum(0), torch.full((4,), 6 / 4, dtype=torch.float64), atol=1e-5)


def test_swav_loss_matches_loop():
    batch, k = 4, 5
    scores = [F.normalize(randn(batch, 8), dim=1) @ F.normalize(randn(k, 8), dim=1).T for _ in range(4)]
    tau = 0.1
    expected = 0.0
    for code_view in (0, 1):
        q = reference_sinkhorn(scores[code_view], 0.05, 3)
        sub = 0.0
        for v in range(4):
            if v == code_view:
                continue
            log_p = F.log_softmax(scores[v] / tau, dim=1)
            sub -= float(sum((q[b] * log_p[b]).sum() for b in range(batch))) / batch
        expected += sub / 3
    expected /= 2
    assert float(losses.swav_loss(scores)) == pytest.approx(expected)
    codes = {0: reference_sinkhorn(scores[0], 0.05, 3), 1: reference_sinkhorn(scores[1], 0.05, 3)}
    assert float(losses.swav_swapped_prediction(scores, codes, tau)) == pytest.approx(expected)


# ------------------------------------------------------------------------------ masked


def reference_patchify(images, p):
    b, c, h, w = images.shape
    rows = []
    for i in range(h // p):
        for j in range(w // p):
            patch = images[:, :, i * p : (i + 1) * p, j * p : (j + 1) * p]  # (B, C, p, p)
            rows.append(patch.permute(0, 2, 3, 1).reshape(b, -1))  # (row, column, channel)
    return torch.stack(rows, dim=1)


def test_patchify_layout_and_inverse():
    images = randn(2, 3, 8, 12)
    patches = losses.patchify(images, 4)
    assert patches.shape == (2, 6, 48)
    assert torch.equal(patches, reference_patchify(images, 4))
    assert torch.equal(losses.unpatchify(patches, 4, (8, 12)), images)
    square = randn(2, 3, 8, 8)
    assert torch.equal(losses.unpatchify(losses.patchify(square, 4), 4), square)


@pytest.mark.parametrize("normalize_pixels", [True, False])
def test_mae_loss_matches_loop(normalize_pixels):
    images, p = randn(2, 3, 8, 8), 4
    predictions = randn(2, 4, 48)
    mask = torch.tensor([[True, False, True, False], [False, False, True, True]])
    target = reference_patchify(images, p)
    total, count = 0.0, 0
    for b in range(2):
        for n in range(4):
            if not mask[b, n]:
                continue
            t = target[b, n]
            if normalize_pixels:
                t = (t - t.mean()) / math.sqrt(float(((t - t.mean()) ** 2).sum()) / (t.numel() - 1) + 1e-6)
            total += float(((predictions[b, n] - t) ** 2).mean())
            count += 1
    loss = losses.mae_loss(predictions, images, mask, p, normalize_pixels=normalize_pixels)
    assert float(loss) == pytest.approx(total / count)


def test_simmim_loss_matches_loop():
    images, reconstruction, p = randn(2, 3, 8, 8), randn(2, 3, 8, 8), 4
    mask = torch.tensor([[True, False, False, True], [False, True, False, False]])
    total, masked_pixels = 0.0, 0
    for b in range(2):
        for y in range(8):
            for x in range(8):
                if mask[b, (y // p) * 2 + x // p]:
                    total += float((reconstruction[b, :, y, x] - images[b, :, y, x]).abs().sum())
                    masked_pixels += 1
    expected = total / (masked_pixels + 1e-5) / 3
    assert float(losses.simmim_loss(reconstruction, images, mask, p)) == pytest.approx(expected)


def test_normalize_locally_matches_loop():
    images, window = randn(1, 2, 7, 6) * 3 + 1, 5
    normalized = losses.normalize_locally(images, window)
    for c in range(2):
        for y in range(7):
            for x in range(6):  # the window clipped to the image, unbiased variance
                patch = images[0, c, max(y - 2, 0):y + 3, max(x - 2, 0):x + 3].flatten()
                expected = (images[0, c, y, x] - patch.mean()) / math.sqrt(float(patch.var()) + 1e-6)
                assert float(normalized[0, c, y, x]) == pytest.approx(float(expected), rel=1e-4, abs=1e-5)
    with pytest.raises(ValueError, match="window=4"):
        losses.normalize_locally(images, 4)


def test_beit_loss_matches_loop_over_the_masked_patches():
    codes = torch.tensor([[3, 0, 2, 1], [1, 1, 0, 3]])
    mask = torch.tensor([[True, False, True, False], [False, True, True, True]])
    masked_logits = randn(int(mask.sum()), 4)  # rows in the order of tokens[mask]
    total, row = 0.0, 0
    for b in range(2):
        for n in range(4):
            if mask[b, n]:
                scores = masked_logits[row]
                total -= float(scores[codes[b, n]] - torch.log(torch.exp(scores).sum()))
                row += 1
    assert float(losses.beit_loss(masked_logits, codes, mask)) == pytest.approx(total / row)


# ------------------------------------------------------------------------------ discrete


def reference_kl_to_uniform(logits):
    """Mean over cells of sum_k q_k ln(q_k / (1 / K)), q the softmax over the K codes, cell by cell."""
    batch, codes, rows, columns = logits.shape
    total = 0.0
    for b in range(batch):
        for y in range(rows):
            for x in range(columns):
                weights = [math.exp(float(logits[b, k, y, x])) for k in range(codes)]
                q = [w / sum(weights) for w in weights]
                total += sum(p * math.log(p / (1 / codes)) for p in q)
    return total / (batch * rows * columns)


def test_kl_to_uniform_matches_loop_and_its_bounds():
    logits = randn(2, 5, 3, 2) * 2
    assert float(losses.kl_to_uniform(logits)) == pytest.approx(reference_kl_to_uniform(logits))
    assert float(losses.kl_to_uniform(torch.zeros(2, 7, 3, 3))) == pytest.approx(0.0, abs=1e-12)
    one_hot = torch.full((1, 7, 2, 2), -1e4, dtype=torch.float64)
    one_hot[:, 3] = 0.0
    assert float(losses.kl_to_uniform(one_hot)) == pytest.approx(math.log(7))


def test_dvae_loss_is_the_negative_elb_per_value():
    images, reconstruction, logits = randn(2, 3, 4, 4), randn(2, 3, 4, 4), randn(2, 6, 2, 2)
    squared = [float(reconstruction[b, c, y, x] - images[b, c, y, x]) ** 2
               for b in range(2) for c in range(3) for y in range(4) for x in range(4)]
    error = sum(squared) / len(squared)
    kl = reference_kl_to_uniform(logits)
    loss, reconstruction_error, kl_term = losses.dvae_loss(reconstruction, images, logits, kl_weight=0.3)
    assert float(reconstruction_error) == pytest.approx(error)
    assert float(kl_term) == pytest.approx(kl)
    assert float(loss) == pytest.approx(error + 0.3 * kl)
    logits.requires_grad_(True)
    losses.dvae_loss(reconstruction, images, logits, kl_weight=0.0)[0].backward()
    assert logits.grad is None or float(logits.grad.abs().sum()) == 0.0  # beta 0: no pull towards the prior


def test_codebook_usage_perplexity_and_fraction_used():
    codes = torch.tensor([[0, 0, 1, 1], [2, 2, 3, 3]])  # 4 of 8 codes, evenly
    perplexity, used = losses.codebook_usage(codes, 8)
    assert float(perplexity) == pytest.approx(4.0) and float(used) == pytest.approx(0.5)
    collapsed = losses.codebook_usage(torch.full((3, 5), 6), 8)
    assert float(collapsed[0]) == pytest.approx(1.0) and float(collapsed[1]) == pytest.approx(1 / 8)
    skewed = torch.tensor([0] * 6 + [1] * 2)  # p = (3/4, 1/4): exp(H) = 4 / 3^(3/4)
    assert float(losses.codebook_usage(skewed, 4)[0]) == pytest.approx(4 / 3 ** 0.75)


# ------------------------------------------------------------------------------ pretext


def test_classification_loss():
    logits, labels = randn(5, 4), torch.tensor([0, 3, 1, 2, 0])
    expected = -sum(float(F.log_softmax(logits[i], 0)[labels[i]]) for i in range(5)) / 5
    assert float(losses.classification_loss(logits, labels)) == pytest.approx(expected)


def test_rebalancing_weights_expectation_is_one():
    prior = torch.tensor([0.7, 0.2, 0.05, 0.05], dtype=torch.float64)
    weights = losses.rebalancing_weights(prior, lambda_=0.5)
    raw = 1 / (0.5 * prior + 0.5 / 4)
    assert torch.allclose(weights, raw / (prior * raw).sum())
    assert float((prior * weights).sum()) == pytest.approx(1.0)
    assert weights[0] < weights[2]  # rare colours weigh more


def test_colorization_loss_matches_loop():
    b, q, h, w = 2, 5, 3, 4
    logits = randn(b, q, h, w)
    bins = torch.randint(0, q, (b, h, w))
    weights = losses.rebalancing_weights(torch.rand(q, dtype=torch.float64) + 0.1)
    total = 0.0
    for i in range(b):
        for y in range(h):
            for x in range(w):
                log_p = F.log_softmax(logits[i, :, y, x], dim=0)
                total += -float(weights[bins[i, y, x]] * log_p[bins[i, y, x]])
    expected = total / (b * h * w)
    assert float(losses.colorization_loss(logits, bins, weights)) == pytest.approx(expected)
    soft = F.one_hot(bins, q).permute(0, 3, 1, 2).to(torch.float64)
    assert float(losses.colorization_loss(logits, soft, weights)) == pytest.approx(expected)
    unweighted = F.cross_entropy(logits, bins)
    assert torch.allclose(losses.colorization_loss(logits, bins), unweighted)


def test_inpainting_loss_region_and_overlap_band():
    reconstruction, target = randn(2, 3, 16, 16), randn(2, 3, 16, 16)
    region = torch.zeros(16, 16, dtype=torch.bool)
    region[6:10, 5:11] = True
    predicted = torch.zeros(16, 16, dtype=torch.bool)
    predicted[4:12, 3:13] = True  # region grown by 2 px on every side
    weight = torch.where(region, 1.0, torch.where(predicted, 10.0, 0.0)).to(torch.float64)
    error = (reconstruction - target) ** 2
    expected = float((error * weight).sum()) / (2 * 3 * int(predicted.sum()))
    loss = losses.inpainting_loss(reconstruction, target, region, overlap_pixels=2)
    assert float(loss) == pytest.approx(expected)
    plain = losses.inpainting_loss(reconstruction, target, region[None, None].expand(2, 1, 16, 16), overlap_pixels=0)
    assert float(plain) == pytest.approx(float((error * region).sum()) / (2 * 3 * int(region.sum())))
