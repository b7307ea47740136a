"""Segmentation on the frozen feature map: mIoU and pixel accuracy on label maps whose answer is
known, and the protocol end to end on the demo shapes' masks (real shards, DALI CPU, real steps)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from selfsup.errors import DatasetError
from selfsup.methods.backbones import build_backbone
from selfsup.pipeline.dataset import load_dataset_info
from selfsup.pipeline.segmentation_loader import build_segmentation_loader, mask_batch
from selfsup.trainer.segmentation import confusion_matrix, segmentation_evaluate, segmentation_scores
from tests.trainer.training_run import OneTorchThread


def test_scores_of_a_known_prediction():
    target = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 255, 255]])
    prediction = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 1], [2, 0, 1, 2]])
    confusion = confusion_matrix(prediction, target, 3)
    assert confusion.tolist() == [[3, 1, 0], [0, 4, 0], [1, 0, 1]]  # the two ignored pixels left out
    scores = segmentation_scores(confusion)
    iou = [3 / (4 + 4 - 3), 4 / (5 + 4 - 4), 1 / (1 + 2 - 1)]  # TP / (predicted + labeled - TP)
    assert scores["per_class_iou"] == pytest.approx([100 * value for value in iou])
    assert scores["mIoU"] == pytest.approx(100 * sum(iou) / 3)
    assert scores["pixel_accuracy"] == pytest.approx(100 * 8 / 10)


def test_a_class_never_labeled_nor_predicted_is_left_out_and_out_of_range_is_refused():
    scores = segmentation_scores(confusion_matrix(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 1]), 4))
    assert scores["mIoU"] == 100.0 and scores["per_class_iou"][2:] == [None, None]
    with pytest.raises(DatasetError, match="a mask holds class 7, but the dataset has 4 classes"):
        confusion_matrix(torch.tensor([0]), torch.tensor([7]), 4)


def test_scores_on_the_real_masks_the_answer_known(demo_masked_shards):
    dataset = load_dataset_info(demo_masked_shards)
    masks = torch.cat([mask_batch(batch) for batch in build_segmentation_loader(dataset, split="val", size=32,
                                                                                 batch_size=16, train=False)])
    perfect = segmentation_scores(confusion_matrix(masks, masks, 11))
    assert perfect["mIoU"] == 100.0 and perfect["pixel_accuracy"] == 100.0
    background = segmentation_scores(confusion_matrix(torch.zeros_like(masks), masks, 11))
    share = float((masks == 0).double().mean())
    present = len(torch.unique(masks))
    assert background["pixel_accuracy"] == pytest.approx(100 * share)
    assert background["mIoU"] == pytest.approx(100 * share / present)  # background's IoU is its share; others 0


@pytest.mark.slow
@pytest.mark.parametrize("head", ["linear", "fcn"])
def test_a_head_trains_on_the_frozen_feature_map(head, demo_masked_shards):
    torch.manual_seed(0)
    backbone = build_backbone("resnet18", small_input=True)[0]  # a 32 x 32 map at 32 px
    before = {key: value.clone() for key, value in backbone.state_dict().items()}
    with OneTorchThread():
        result = segmentation_evaluate(backbone, demo_masked_shards, image_size=32, head=head, epochs=3,
                                       batch_size=24, lr=0.01)
    assert all(torch.equal(value, backbone.state_dict()[key]) for key, value in before.items())  # frozen
    assert result["segmentation_classes"] == 11 and result["eval_samples"] == 40 and result["eval_split"] == "val"
    assert result["final_loss"] < 2.0 < np.log(11)  # it learned something of the 11 classes' pixels
    assert 0.0 < result["mIoU"] <= 100.0 and 0.0 < result["pixel_accuracy"] <= 100.0


def test_segmentation_needs_masks(demo_shards):
    backbone = build_backbone("resnet18")[0]
    with pytest.raises(DatasetError, match=r"no segmentation masks in this dataset .* --masks MASKS"):
        segmentation_evaluate(backbone, demo_shards, image_size=32)
