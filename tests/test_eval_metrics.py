"""Evaluation metrics against hand-computed cases: perfect, constant, known confusions, ties."""
import math

import pytest
import torch

from maskclip.errors import InputError, InputTypeError
from maskclip.eval import metrics
from maskclip.eval.linear_probe import probe


def test_a_perfect_classifier_scores_one():
    targets = torch.tensor([0, 1, 2, 3, 4, 5, 6, 2])
    scores = torch.nn.functional.one_hot(targets, 7).float()
    assert metrics.topk_accuracy(scores, targets, (1, 5)) == {1: 1.0, 5: 1.0}
    assert metrics.mean_per_class_recall(scores.argmax(1), targets, 7) == 1.0


def test_a_constant_classifier_scores_chance():
    targets = torch.arange(10).repeat(3)  # 10 balanced classes
    scores = torch.zeros(30, 10)  # all tied: ranks follow the class index, prediction is class 0
    assert metrics.topk_accuracy(scores, targets, (1, 5)) == {1: 0.1, 5: 0.5}
    unbalanced = torch.tensor([0, 0, 0, 1, 2, 2])
    assert metrics.mean_per_class_recall(torch.zeros(6, dtype=torch.long), unbalanced, 3) == pytest.approx(1 / 3)


def test_ties_rank_the_lower_index_first():
    scores = torch.tensor([[1.0, 1.0, 0.0], [0.5, 2.0, 2.0]])
    assert metrics.target_ranks(scores, torch.tensor([1, 2])).tolist() == [1, 1]
    assert metrics.topk_accuracy(scores, torch.tensor([1, 2]), (1, 2)) == {1: 0.0, 2: 1.0}


def test_per_class_recall_is_nan_for_a_class_without_samples():
    recall = metrics.per_class_recall(torch.tensor([0, 1, 1, 0]), torch.tensor([0, 0, 1, 1]), 3)
    assert recall[:2].tolist() == [0.5, 0.5] and math.isnan(recall[2])
    assert metrics.mean_per_class_recall(torch.tensor([0, 1, 1, 0]), torch.tensor([0, 0, 1, 1]), 3) == 0.5


def test_a_known_confusion_gives_the_known_miou():
    # truth 0: 3 right, 1 as class 1; truth 1: 2 as class 0, 4 right; two ignored pixels
    targets = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 255, 255])
    preds = torch.tensor([0, 0, 0, 1, 0, 0, 1, 1, 1, 1, 1, 0])
    cm = metrics.confusion_matrix(preds, targets, 2)
    assert cm.tolist() == [[3, 1], [2, 4]]
    iou = metrics.iou_per_class(cm)
    assert iou.tolist() == pytest.approx([3 / 6, 4 / 7])
    assert metrics.mean_iou(cm) == pytest.approx((3 / 6 + 4 / 7) / 2)
    assert metrics.pixel_accuracy(cm) == pytest.approx(7 / 10)


def test_perfect_segmentation_scores_one_and_absent_classes_follow_mmseg():
    labels = torch.tensor([[0, 1], [1, 0]])
    assert metrics.mean_iou(metrics.confusion_matrix(labels, labels, 3)) == 1.0  # class 2 absent everywhere: skipped
    wrong = torch.tensor([[0, 1], [1, 2]])  # class 2 predicted but absent from the labels: IoU 0, counted
    cm = metrics.confusion_matrix(wrong, labels, 3)
    assert metrics.iou_per_class(cm).tolist() == pytest.approx([0.5, 1.0, 0.0])
    assert metrics.pixel_accuracy(cm) == 0.75


def test_retrieval_of_a_perfect_scorer_is_one_both_ways():
    text_image = torch.tensor([0, 0, 1, 1, 2, 2])
    scores = torch.nn.functional.one_hot(text_image, 3).T.float()  # [3 images, 6 texts]
    r = metrics.retrieval_recall(scores, text_image, (1, 5))
    assert r == {"image_to_text": {1: 1.0, 5: 1.0}, "text_to_image": {1: 1.0, 5: 1.0}}


def test_retrieval_with_ties_and_several_captions_per_image():
    # Constant scores: every ranking follows the index. Texts 0,1 -> image 0; 2,3 -> image 1; 4,5 -> image 2.
    text_image = torch.tensor([0, 0, 1, 1, 2, 2])
    r = metrics.retrieval_recall(torch.zeros(3, 6), text_image, (1, 3, 5))
    # image i's best caption is text 2i, at rank 2i: found at k=1 for image 0, k=3 for 0-1, k=5 for all
    assert r["image_to_text"] == pytest.approx({1: 1 / 3, 3: 2 / 3, 5: 1.0})
    # text t's image ranks at its image index: 2 of 6 texts at rank 0, 4 within rank 1
    assert r["text_to_image"] == pytest.approx({1: 2 / 6, 3: 1.0, 5: 1.0})


def test_retrieval_of_a_known_score_matrix():
    scores = torch.tensor([[0.9, 0.1, 0.8, 0.2],   # image 0, captions 0 and 1: caption 1 ranks 3rd, caption 0 1st
                           [0.3, 0.7, 0.2, 0.6]])  # image 1, captions 2 and 3: caption 3 ranks 2nd
    r = metrics.retrieval_recall(scores, torch.tensor([0, 0, 1, 1]), (1, 2))
    assert r["image_to_text"] == {1: 0.5, 2: 1.0}
    # text 0 -> image 0 (0.9 > 0.3) yes; text 1 -> image 0? 0.1 < 0.7 no; text 2 -> image 1? 0.2 < 0.8 no;
    # text 3 -> image 1 (0.6 > 0.2) yes
    assert r["text_to_image"] == {1: 0.5, 2: 1.0}


def test_metrics_reject_malformed_input():
    with pytest.raises(InputError):
        metrics.topk_accuracy(torch.zeros(3, 4), torch.tensor([0, 1]))
    with pytest.raises(InputError, match=r"\[0, 4\)"):
        metrics.topk_accuracy(torch.zeros(2, 4), torch.tensor([0, 4]))
    with pytest.raises(InputTypeError):
        metrics.confusion_matrix(torch.zeros(4), torch.zeros(4), 2)
    with pytest.raises(InputError, match="same shape"):
        metrics.confusion_matrix(torch.zeros(4, dtype=torch.long), torch.zeros(5, dtype=torch.long), 2)
    with pytest.raises(InputError, match="at least one caption"):
        metrics.retrieval_recall(torch.zeros(3, 2), torch.tensor([0, 1]))


def _blobs(n_per_class, num_classes, dim, seed, spread=0.1):
    g = torch.Generator().manual_seed(seed)
    centres = torch.eye(num_classes, dim) * 3
    y = torch.arange(num_classes).repeat_interleave(n_per_class)
    return centres[y] + spread * torch.randn(len(y), dim, generator=g), y


def test_linear_probe_separates_separable_classes():
    train, val, test = _blobs(20, 4, 6, 0), _blobs(5, 4, 6, 1), _blobs(10, 4, 6, 2)
    r = probe(train, val, test, 4, weight_decays=(1e-4, 1e-2))
    assert r["top1"] == 1.0 and r["mean_per_class_recall"] == 1.0
    assert [row["weight_decay"] for row in r["sweep"]] == [1e-4, 1e-2]


def test_linear_probe_on_uninformative_features_is_at_chance_and_prefers_more_decay():
    train, val, test = _blobs(20, 4, 6, 0), _blobs(5, 4, 6, 1), _blobs(10, 4, 6, 2)
    zeros = [(torch.zeros_like(x), y) for x, y in (train, val, test)]
    r = probe(*zeros, 4, weight_decays=(1e-3, 1e-1, 1.0))
    assert r["weight_decay"] == 1.0  # every setting ties on validation: the strongest decay wins
    assert r["mean_per_class_recall"] == pytest.approx(0.25)
