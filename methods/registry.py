"""The method registry: a plain dict from a config name to how the method is built.

Each entry names the method's options dataclass (the typed `method:` section of a config), the
builder that turns those options into plain constructor arguments (and returns a module that
satisfies `methods.protocol.Method`; a method whose options name a `tokenizer`, BEiT, also gets
the tokenizer module, which `trainer.model.build_model` loads: methods import no trainer), the name of the view recipe in `pipeline.recipes` that
feeds it, and the one-line description `selfsup methods` prints. The shared registry test builds
every entry and checks it against the protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from selfsup.methods import (
    barlow_twins, beit, byol, colorization, deepcluster, deepcluster_v2, denoising_autoencoder, dino, dvae,
    inpainting, jigsaw, mae, moco_v1, moco_v2, moco_v3, nnclr, npid, odc, relative_location, rotation, simclr,
    simmim, simsiam, super_resolution, supervised, swav, vicreg,
)
from selfsup.methods.protocol import Method


@dataclass(frozen=True)
class MethodEntry:
    options: type  # dataclass with a `name` field and the method's hyperparameters
    build: Callable[..., Method]  # build(options, backbone, feature_dim[, tokenizer]) -> the method module
    recipe: str  # a key of pipeline.recipes.RECIPES
    description: str


METHODS: dict[str, MethodEntry] = {
    # contrastive
    "simclr": MethodEntry(simclr.SimCLROptions, simclr.build_simclr, "simclr",
                          "contrastive: two views, NT-Xent over the global batch (Chen et al. 2020)"),
    "moco_v1": MethodEntry(moco_v1.MoCoV1Options, moco_v1.build_moco_v1, "simclr",
                           "contrastive: momentum key encoder, linear head, InfoNCE (tau 0.07) against a "
                           "queue of 65536 keys, shuffling BN (He et al. 2020)"),
    "moco_v2": MethodEntry(moco_v2.MoCoV2Options, moco_v2.build_moco_v2, "simclr",
                           "contrastive: momentum key encoder, InfoNCE against a queue of 65536 keys "
                           "(He et al. 2020; Chen et al. 2020)"),
    "moco_v3": MethodEntry(moco_v3.MoCoV3Options, moco_v3.build_moco_v3, "byol",
                           "contrastive: ViT, symmetric InfoNCE against momentum-encoder keys of the "
                           "batch, predictor (Chen, Xie & He 2021)"),
    "nnclr": MethodEntry(nnclr.NNCLROptions, nnclr.build_nnclr, "byol",
                         "contrastive: the positive is the nearest neighbour in a support-set queue "
                         "(Dwibedi et al. 2021)"),
    # bootstrap / self-distillation
    "byol": MethodEntry(byol.BYOLOptions, byol.build_byol, "byol",
                        "bootstrap: predict an EMA target network's projection, no negatives "
                        "(Grill et al. 2020)"),
    "simsiam": MethodEntry(simsiam.SimSiamOptions, simsiam.build_simsiam, "simclr",
                           "bootstrap: Siamese predictor with a stop-gradient, no momentum encoder "
                           "(Chen & He 2021)"),
    "dino": MethodEntry(dino.DINOOptions, dino.build_dino, "dino",
                        "self-distillation: multi-crop student matches a centered, sharpened EMA "
                        "teacher (Caron et al. 2021)"),
    # redundancy reduction
    "barlow_twins": MethodEntry(barlow_twins.BarlowTwinsOptions, barlow_twins.build_barlow_twins,
                                "barlow_twins", "redundancy reduction: cross-correlation of two views "
                                "towards the identity (Zbontar et al. 2021)"),
    "vicreg": MethodEntry(vicreg.VICRegOptions, vicreg.build_vicreg, "vicreg",
                          "redundancy reduction: variance, invariance and covariance terms "
                          "(Bardes, Ponce & LeCun 2022)"),
    # clustering
    "swav": MethodEntry(swav.SwAVOptions, swav.build_swav, "swav",
                        "clustering: swapped prediction of Sinkhorn-Knopp codes over prototypes, "
                        "multi-crop, queue (Caron et al. 2020)"),
    "deepcluster_v2": MethodEntry(deepcluster_v2.DeepClusterV2Options,
                                  deepcluster_v2.build_deepcluster_v2, "swav",
                                  "clustering: k-means on a memory bank every epoch, crops classify "
                                  "their image's cluster (Caron et al. 2020)"),
    "deepcluster": MethodEntry(deepcluster.DeepClusterOptions, deepcluster.build_deepcluster,
                               "deepcluster", "clustering: k-means of PCA-whitened features every epoch, "
                               "a re-initialized classifier learns the pseudo-labels (Caron et al. 2018)"),
    "odc": MethodEntry(odc.ODCOptions, odc.build_odc, "deepcluster",
                       "clustering: pseudo-labels and centroids updated online from a memory bank, "
                       "small clusters split and merged (Zhan et al. 2020)"),
    "npid": MethodEntry(npid.NPIDOptions, npid.build_npid, "simclr",
                        "instance discrimination: memory bank of per-image features, NCE or "
                        "softmax over the bank (Wu et al. 2018)"),
    # masked image modeling
    "mae": MethodEntry(mae.MAEOptions, mae.build_mae, "mae",
                       "masked: ViT encoder on the visible 25% of patches, light decoder, "
                       "normalized-pixel MSE on the masked ones (He et al. 2022)"),
    "simmim": MethodEntry(simmim.SimMIMOptions, simmim.build_simmim, "simmim",
                          "masked: mask tokens in the ViT input, linear head, L1 on masked pixels "
                          "(Xie et al. 2022)"),
    "dvae": MethodEntry(dvae.DVAEOptions, dvae.build_dvae, "dvae",
                        "tokenizer: discrete VAE, Gumbel-softmax over 8192 codes per patch, KL to the "
                        "uniform prior; BEiT's visual tokens (Ramesh et al. 2021)"),
    "beit": MethodEntry(beit.BEiTOptions, beit.build_beit, "beit",
                        "masked: block-wise masks, mask tokens in the ViT input, cross-entropy over a "
                        "dvae tokenizer's codes of the masked patches (Bao et al. 2022)"),
    # pretext tasks
    "rotation": MethodEntry(rotation.RotationOptions, rotation.build_rotation, "rotation",
                            "pretext: classify the rotation (0/90/180/270) of each image "
                            "(Gidaris et al. 2018)"),
    "jigsaw": MethodEntry(jigsaw.JigsawOptions, jigsaw.build_jigsaw, "jigsaw",
                          "pretext: name the permutation of 3x3 shuffled tiles, context-free "
                          "network (Noroozi & Favaro 2016)"),
    "relative_location": MethodEntry(relative_location.RelativeLocationOptions,
                                     relative_location.build_relative_location,
                                     "relative_location",
                                     "pretext: classify where a patch sits relative to the centre "
                                     "patch, 8 positions (Doersch et al. 2015)"),
    "colorization": MethodEntry(colorization.ColorizationOptions,
                                colorization.build_colorization, "colorization",
                                "pretext: predict 313 quantized ab colour bins from lightness, "
                                "class-rebalanced (Zhang et al. 2016)"),
    "inpainting": MethodEntry(inpainting.InpaintingOptions, inpainting.build_inpainting,
                              "inpainting", "pretext: context encoder reconstructs a removed "
                              "region, masked L2; with method.adversarial_weight (0.001) also a "
                              "discriminator on the filled region (Pathak et al. 2016)"),
    # generative
    "super_resolution": MethodEntry(super_resolution.SuperResolutionOptions,
                                    super_resolution.build_super_resolution, "super_resolution",
                                    "generative: the encoder of a x4 super-resolution generator, pixel "
                                    "MSE + adversarial (+ content) loss (SRGAN, Ledig et al. 2017)"),
    "denoising_autoencoder": MethodEntry(denoising_autoencoder.DenoisingAutoencoderOptions,
                                         denoising_autoencoder.build_denoising_autoencoder, "denoising",
                                         "generative: reconstruct the clean view from one with dropped "
                                         "pixels or Gaussian noise (Vincent et al. 2008)"),
    # with labels: the ceiling the self-supervised methods are measured against
    "supervised": MethodEntry(supervised.SupervisedOptions, supervised.build_supervised, "supervised",
                              "supervised: cross-entropy of a linear classifier on the class labels, "
                              "SimCLR's views (needs a labeled dataset)"),
}


def method_entry(name: str) -> MethodEntry:
    """The entry for `name`; an unknown name lists the known ones."""
    if name not in METHODS:
        raise KeyError(f"unknown method {name!r}; known methods: {', '.join(sorted(METHODS))}")
    return METHODS[name]
