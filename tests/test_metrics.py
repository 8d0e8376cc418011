"""Metrics against a hand-worked example and against slow pure-Python references."""

import math

import numpy as np
import pytest

from mess_edge.errors import MessError
from mess_edge.metrics import confusion_matrix, iou_per_class, miou, miou_batch, pixel_accuracy


def _reference_conf(pred, gt, c, ignore=255):
    conf = [[0] * c for _ in range(c)]
    for p, g in zip(pred.ravel().tolist(), gt.ravel().tolist()):
        if g != ignore:
            conf[g][p] += 1
    return conf


def _reference_miou(conf):
    c = len(conf)
    ious = []
    for k in range(c):
        tp = conf[k][k]
        gt_k = sum(conf[k][j] for j in range(c))
        pred_k = sum(conf[i][k] for i in range(c))
        union = gt_k + pred_k - tp
        if union > 0:
            ious.append(tp / union)
    return sum(ious) / len(ious) if ious else float("nan")


def test_hand_computed_example():
    # Counted pixels (gt, pred): (0,0) (0,1) (1,1) (1,2) (2,2); the last gt pixel is 255 and dropped.
    gt = np.array([[0, 0, 1], [1, 2, 255]], np.uint8)
    pred = np.array([[0, 1, 1], [2, 2, 0]], np.uint8)
    conf = confusion_matrix(pred, gt, 4)
    # rows = ground truth, cols = prediction; class 3 appears nowhere.
    assert conf.tolist() == [[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    assert conf.dtype == np.int64
    # IoU_0 = 1 / (2 + 1 - 1) = 1/2; IoU_1 = 1 / (2 + 2 - 1) = 1/3; IoU_2 = 1 / (1 + 2 - 1) = 1/2; IoU_3 = nan
    iou = iou_per_class(conf)
    assert iou[:3].tolist() == [0.5, 1.0 / 3.0, 0.5]
    assert math.isnan(iou[3])
    assert miou(conf) == pytest.approx(4.0 / 9.0, abs=1e-15)  # (1/2 + 1/3 + 1/2) / 3
    assert pixel_accuracy(conf) == pytest.approx(3.0 / 5.0, abs=1e-15)
    assert miou_batch(conf) == pytest.approx(4.0 / 9.0, abs=1e-15)


@pytest.mark.parametrize("seed", range(5))
def test_against_pure_python_reference(seed):
    rng = np.random.default_rng(seed)
    c = int(rng.integers(2, 12))
    shape = tuple(rng.integers(1, 40, size=int(rng.integers(1, 4))).tolist())
    gt = rng.integers(0, c, shape).astype(np.uint8)
    gt[rng.uniform(size=shape) < 0.2] = 255
    # Predictions mostly right, with a class-dependent bias so IoUs differ from class to class.
    pred = np.where(rng.uniform(size=shape) < 0.6, np.minimum(gt, c - 1), rng.integers(0, c, shape))
    pred = pred.astype(np.int32)
    conf = confusion_matrix(pred, gt, c)
    ref = _reference_conf(pred, gt, c)
    assert conf.tolist() == ref
    assert miou(conf) == pytest.approx(_reference_miou(ref), rel=1e-12)
    counted = int((gt != 255).sum())
    assert conf.sum() == counted
    if counted:
        assert pixel_accuracy(conf) == pytest.approx(float(((pred == gt) & (gt != 255)).sum()) / counted)


def test_out_of_range_values_are_errors():
    gt = np.array([0, 1, 2, 255])
    with pytest.raises(MessError, match=r"got predicted class ids \[3, 7\] out of range; expected 0\.\.2"):
        confusion_matrix(np.array([0, 3, 7, 0]), gt, 3)
    # A prediction at an ignored pixel does not count and is not checked.
    assert confusion_matrix(np.array([0, 1, 2, 9]), gt, 3).trace() == 3
    with pytest.raises(MessError, match=r"got ground-truth class ids \[5\] out of range; expected 0\.\.2 or 255"):
        confusion_matrix(np.array([0, 1, 2, 0]), np.array([0, 1, 5, 255]), 3)
    with pytest.raises(MessError, match=r"got prediction of shape \(2,\) and ground truth of shape \(3,\)"):
        confusion_matrix(np.zeros(2, int), np.zeros(3, int), 3)


def test_empty_and_degenerate_matrices():
    assert math.isnan(miou(np.zeros((3, 3), np.int64)))
    assert math.isnan(pixel_accuracy(np.zeros((3, 3), np.int64)))
    assert np.isnan(miou_batch(np.zeros((2, 3, 3), np.int64))).all()
    assert confusion_matrix(np.zeros((0,), np.uint8), np.zeros((0,), np.uint8), 3).sum() == 0


def test_miou_batch_equals_loop_of_miou():
    rng = np.random.default_rng(7)
    c = 11
    confs = rng.integers(0, 50, (6, 9, c, c)).astype(np.int64)
    # Some classes absent from both gt and prediction (empty union), and one matrix entirely empty.
    confs[0, :, 3, :] = 0
    confs[0, :, :, 3] = 0
    confs[1, 2, :, :] = 0
    confs[2, :, 5:, :] = 0
    out = miou_batch(confs)
    assert out.shape == (6, 9) and out.dtype == np.float64
    expected = np.array([[miou(confs[i, j]) for j in range(9)] for i in range(6)])
    np.testing.assert_allclose(out, expected, rtol=1e-12, equal_nan=True)
    assert math.isnan(out[1, 2])
    # Narrow integer types are summed in 64 bits (uint8 row sums of 11 x 49 would wrap).
    np.testing.assert_allclose(miou_batch(confs.astype(np.uint8)), expected, rtol=1e-12, equal_nan=True)
    # Float accumulations (summed memo matrices) give the same answer.
    np.testing.assert_allclose(miou_batch(confs.astype(np.float64)), expected, rtol=1e-12, equal_nan=True)


def test_miou_batch_across_chunks():
    # More matrices than one internal chunk, with a leading shape that must be restored.
    rng = np.random.default_rng(3)
    confs = rng.integers(0, 5, (3, 3000, 4, 4))
    confs[:, ::7, 2, :] = 0
    confs[:, ::7, :, 2] = 0
    out = miou_batch(confs)
    assert out.shape == (3, 3000)
    flat = confs.reshape(-1, 4, 4)
    expected = np.array([_reference_miou(flat[i].tolist()) for i in range(0, flat.shape[0], 97)])
    np.testing.assert_allclose(out.reshape(-1)[::97], expected, rtol=1e-12)
