import math

import pytest
import torch

from fcnseg.metrics import ConfusionMatrix


def test_hand_computed_case_with_ignore_and_absent_class():
    # 4 classes; class 3 never appears in target or prediction (skipped by the means);
    # class 2 is predicted but absent from the target (IoU 0, accuracy NaN).
    target = torch.tensor([[0, 0, 1, 1], [1, 255, 0, 7]])  # 255 ignored, 7 out of range
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 0, 3]])
    cm = ConfusionMatrix(4, ignore_index=255)
    cm.update(pred, target)
    m = cm.compute()
    # scored pixels: (0,0) (0,1) (1,1) (1,1) (1,2) (0,0)
    assert cm.matrix.tolist() == [[2, 1, 0, 0], [0, 2, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    assert m["pixel_acc"] == pytest.approx(4 / 6)
    assert m["acc"][0] == pytest.approx(2 / 3) and m["acc"][1] == pytest.approx(2 / 3)
    assert math.isnan(m["acc"][2]) and math.isnan(m["acc"][3])
    assert m["mean_acc"] == pytest.approx(2 / 3)
    # IoU: class0 2/(3+2-2)=2/3; class1 2/(3+3-2)=1/2; class2 0/(0+1-0)=0; class3 nan
    assert m["iou"][:3] == pytest.approx([2 / 3, 1 / 2, 0.0])
    assert math.isnan(m["iou"][3])
    assert m["mean_iou"] == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)
    assert m["fw_iou"] == pytest.approx(0.5 * 2 / 3 + 0.5 * 1 / 2)


def test_accumulates_and_resets():
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([0, 1]), torch.tensor([0, 1]))
    cm.update(torch.tensor([1, 1]), torch.tensor([0, 1]))
    assert cm.matrix.tolist() == [[1, 1], [0, 2]]
    assert cm.compute()["pixel_acc"] == pytest.approx(3 / 4)
    cm.reset()
    assert cm.matrix.sum() == 0
    assert math.isnan(cm.compute()["mean_iou"])


def test_shape_mismatch_and_bad_prediction_raise():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="resize the logits"):
        cm.update(torch.zeros(2, 3), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="predictions must lie"):
        cm.update(torch.tensor([5]), torch.tensor([0]))
    # a prediction at an unscored pixel is not scored, whatever it is
    cm.update(torch.tensor([5, 1, -1]), torch.tensor([255, 1, 7]))
    assert cm.mat.sum() == 1 and cm.mat[1, 1] == 1


def test_an_ignore_index_inside_the_class_range_is_not_scored():
    cm = ConfusionMatrix(3, ignore_index=0)
    cm.update(torch.tensor([0, 1, 2, 2]), torch.tensor([0, 1, 2, 0]))
    assert cm.mat.sum() == 2 and cm.mat[1, 1] == 1 and cm.mat[2, 2] == 1 and cm.mat[0].sum() == 0


def test_chunked_updates_and_relabelled_classes_give_the_same_scores():
    g = torch.Generator().manual_seed(0)
    k = 5
    target = torch.randint(0, k, (3, 17, 23), generator=g)
    target[0, :4] = 255
    pred = torch.where(torch.rand(3, 17, 23, generator=g) < 0.6, target.clamp(max=k - 1),
                       torch.randint(0, k, (3, 17, 23), generator=g))
    whole = ConfusionMatrix(k)
    whole.update(pred, target)
    chunks = ConfusionMatrix(k)
    for i in range(3):
        chunks.update(pred[i], target[i])
    assert torch.equal(whole.matrix, chunks.matrix)
    # renaming the classes by a permutation permutes the per-class scores, the means stay
    perm = torch.tensor([3, 0, 4, 1, 2])
    renamed = ConfusionMatrix(k)
    renamed.update(perm[pred], torch.where(target == 255, 255, perm[target.clamp(max=k - 1)]))
    a, b = whole.compute(), renamed.compute()
    for key in ("pixel_acc", "mean_acc", "mean_iou", "fw_iou"):
        assert b[key] == pytest.approx(a[key], rel=1e-12), key
    assert [b["iou"][int(perm[c])] for c in range(k)] == pytest.approx(a["iou"], rel=1e-12)
    # a perfect prediction scores 1 everywhere; the ignored pixels stay out of every count
    perfect = ConfusionMatrix(k)
    perfect.update(target.clamp(max=k - 1), target)
    p = perfect.compute()
    assert (p["pixel_acc"], p["mean_acc"], p["mean_iou"], p["fw_iou"]) == (1.0, 1.0, 1.0, 1.0)
    assert int(perfect.matrix.sum()) == int((target != 255).sum()) == 3 * 17 * 23 - 4 * 23
