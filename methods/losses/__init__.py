"""Loss functions: pure tensor functions, one file per family, each citing its paper.

contrastive  nt_xent (SimCLR), infonce (MoCo v1/v2), moco_v3_loss, nnclr_loss,
             npid_nce_loss (NPID)
bootstrap    negative_cosine (BYOL, SimSiam), dino_loss, dino_update_center,
             dino_sinkhorn_loss (DINOv2's Sinkhorn-Knopp centering), and their parts
             dino_targets, dino_sinkhorn_targets, distillation_cross_entropy
redundancy   barlow_twins, vicreg, vicreg_terms
clustering   sinkhorn_knopp, swav_swapped_prediction, swav_loss (SwAV), cluster_size_weights,
             weighted_cluster_cross_entropy (DeepCluster, ODC)
masked       patchify, unpatchify, mae_loss (MAE), simmim_loss, normalize_locally (SimMIM),
             beit_loss (BEiT)
discrete     dvae_loss, kl_to_uniform (the dVAE of DALL-E), codebook_usage
pretext      classification_loss (rotation, jigsaw, relative location), colorization_loss,
             rebalancing_weights (colorization), inpainting_loss (context encoder)
generative   discriminator_loss, generator_adversarial_loss (GANs: context encoder, SRGAN),
             pixel_loss, content_loss (SRGAN), denoising_loss (denoising autoencoder)
"""

from selfsup.methods.losses.bootstrap import (
    dino_loss,
    dino_sinkhorn_loss,
    dino_sinkhorn_targets,
    dino_targets,
    dino_update_center,
    distillation_cross_entropy,
    negative_cosine,
)
from selfsup.methods.losses.clustering import (
    cluster_size_weights,
    sinkhorn_knopp,
    swav_loss,
    swav_swapped_prediction,
    weighted_cluster_cross_entropy,
)
from selfsup.methods.losses.contrastive import infonce, moco_v3_loss, nnclr_loss, npid_nce_loss, nt_xent
from selfsup.methods.losses.generative import (
    content_loss,
    denoising_loss,
    discriminator_loss,
    generator_adversarial_loss,
    pixel_loss,
)
from selfsup.methods.losses.discrete import codebook_usage, dvae_loss, kl_to_uniform
from selfsup.methods.losses.masked import beit_loss, mae_loss, normalize_locally, patchify, simmim_loss, unpatchify
from selfsup.methods.losses.pretext import (
    classification_loss,
    colorization_loss,
    inpainting_loss,
    rebalancing_weights,
)
from selfsup.methods.losses.redundancy import barlow_twins, vicreg, vicreg_terms

__all__ = [
    "barlow_twins",
    "beit_loss",
    "classification_loss",
    "cluster_size_weights",
    "codebook_usage",
    "colorization_loss",
    "content_loss",
    "denoising_loss",
    "discriminator_loss",
    "generator_adversarial_loss",
    "dino_loss",
    "dino_sinkhorn_loss",
    "dino_sinkhorn_targets",
    "dino_targets",
    "dino_update_center",
    "distillation_cross_entropy",
    "dvae_loss",
    "infonce",
    "inpainting_loss",
    "kl_to_uniform",
    "mae_loss",
    "moco_v3_loss",
    "negative_cosine",
    "nnclr_loss",
    "npid_nce_loss",
    "nt_xent",
    "patchify",
    "pixel_loss",
    "rebalancing_weights",
    "simmim_loss",
    "normalize_locally",
    "sinkhorn_knopp",
    "swav_loss",
    "swav_swapped_prediction",
    "unpatchify",
    "vicreg",
    "vicreg_terms",
    "weighted_cluster_cross_entropy",
]
