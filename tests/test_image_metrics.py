"""Probability metrics (AUC, operating point, calibration), ROC/reliability plots and Grad-CAM."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from finekit.evaluate.gradcam import grad_cam, last_conv_layer, plot_gradcam_grid
from finekit.evaluate.metrics import probability_metrics
from finekit.evaluate.plots import plot_reliability, plot_roc

BIN = ["normal", "pneumonia"]


def binary_probs(p_pos: list[float]) -> np.ndarray:
    p = np.asarray(p_pos, dtype=float)
    return np.stack([1 - p, p], axis=1)


# --- ROC AUC ---------------------------------------------------------------------------


def test_auc_perfect_reversed_and_missing_class() -> None:
    y = np.array([0, 0, 0, 1, 1, 1])
    scores = [0.1, 0.2, 0.3, 0.7, 0.8, 0.9]
    assert probability_metrics(y, binary_probs(scores), BIN)["roc_auc"] == pytest.approx(1.0)
    reversed_scores = [1 - s for s in scores]
    assert probability_metrics(y, binary_probs(reversed_scores), BIN)["roc_auc"] == pytest.approx(
        0.0
    )
    # Binary AUC is symmetric: scoring "normal" by its own column gives the same value.
    m0 = probability_metrics(y, binary_probs(scores), BIN, positive=0)
    assert m0["roc_auc"] == pytest.approx(1.0) and m0["positive_label"] == "normal"
    only_one = probability_metrics(np.ones(4, int), binary_probs([0.2, 0.6, 0.7, 0.9]), BIN)
    assert only_one["roc_auc"] is None
    assert only_one["sensitivity"] == pytest.approx(0.75)  # the rest is still reported


def test_multiclass_macro_auc_matches_sklearn_and_missing_class_is_none() -> None:
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 20)
    logits = rng.normal(size=(60, 3)) + 1.5 * np.eye(3)[y]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    m = probability_metrics(y, probs, ["a", "b", "c"])
    expected = roc_auc_score(y, probs, multi_class="ovr", average="macro")
    assert m["roc_auc"] == pytest.approx(expected)
    assert 0.5 < m["roc_auc"] < 1.0
    assert "sensitivity" not in m and "brier" not in m  # binary only
    assert probability_metrics(y[y != 2], probs[y != 2], ["a", "b", "c"])["roc_auc"] is None


# --- operating point -------------------------------------------------------------------


def test_operating_point_on_hand_made_confusion() -> None:
    # 4 pneumonia, 4 normal. At 0.5: TP=3 (0.9, 0.8, 0.6), FN=1 (0.3), FP=1 (0.7), TN=3.
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    p = [0.9, 0.8, 0.6, 0.3, 0.7, 0.4, 0.2, 0.1]
    m = probability_metrics(y, binary_probs(p), BIN)
    assert m["positive_label"] == "pneumonia" and m["threshold"] == 0.5
    assert m["sensitivity"] == pytest.approx(3 / 4)
    assert m["specificity"] == pytest.approx(3 / 4)
    assert m["ppv"] == pytest.approx(3 / 4)
    assert m["npv"] == pytest.approx(3 / 4)
    assert m["balanced_accuracy"] == pytest.approx(3 / 4)
    brier = np.mean((np.array(p) - y) ** 2)
    assert m["brier"] == pytest.approx(brier)

    # Lower threshold 0.25: TP=4, FN=0, FP=2 (0.7, 0.4), TN=2.
    low = probability_metrics(y, binary_probs(p), BIN, threshold=0.25)
    assert low["sensitivity"] == pytest.approx(1.0)
    assert low["specificity"] == pytest.approx(2 / 4)
    assert low["ppv"] == pytest.approx(4 / 6)
    assert low["npv"] == pytest.approx(2 / 2)
    # Higher threshold 0.85: TP=1, FN=3, FP=0, TN=4.
    high = probability_metrics(y, binary_probs(p), BIN, threshold=0.85)
    assert high["sensitivity"] == pytest.approx(1 / 4)
    assert high["specificity"] == pytest.approx(1.0)
    assert high["ppv"] == pytest.approx(1.0)
    assert high["npv"] == pytest.approx(4 / 7)
    # positive=0 thresholds the "normal" column: at 0.75 it is the 0.25 cut seen from the other
    # side, so sensitivity/specificity and PPV/NPV swap.
    flipped = probability_metrics(y, binary_probs(p), BIN, positive=0, threshold=0.75)
    assert flipped["positive_label"] == "normal"
    assert flipped["sensitivity"] == pytest.approx(low["specificity"])
    assert flipped["specificity"] == pytest.approx(low["sensitivity"])
    assert flipped["ppv"] == pytest.approx(low["npv"])
    assert flipped["npv"] == pytest.approx(low["ppv"])
    assert low["sensitivity"] >= m["sensitivity"] >= high["sensitivity"]
    assert low["specificity"] <= m["specificity"] <= high["specificity"]


def test_zero_division_gives_zero() -> None:
    # Threshold above every score: no positive predictions, so PPV is 0/0.
    m = probability_metrics(
        np.array([0, 1, 0, 1]), binary_probs([0.1, 0.2, 0.3, 0.4]), BIN, threshold=0.9
    )
    assert m["ppv"] == 0.0 and m["sensitivity"] == 0.0 and m["specificity"] == 1.0


# --- calibration -----------------------------------------------------------------------


def test_ece_zero_when_confidence_equals_bin_accuracy() -> None:
    # Three bins: 5 examples at confidence 0.6 with 3 correct, 4 at 0.75 with 3 correct,
    # 2 at 1.0 both correct. Every bin's accuracy equals its mean confidence.
    conf = [0.6] * 5 + [0.75] * 4 + [1.0] * 2
    correct = [1, 1, 1, 0, 0] + [1, 1, 1, 0] + [1, 1]
    probs = binary_probs(conf)  # the predicted class is always 1
    y = np.where(np.array(correct) == 1, 1, 0)
    m = probability_metrics(y, probs, BIN)
    assert m["ece"] == pytest.approx(0.0, abs=1e-12)
    assert m["mce"] == pytest.approx(0.0, abs=1e-12)
    counts = [b["count"] for b in m["calibration_bins"]]
    assert counts == [5, 4, 2]
    for b in m["calibration_bins"]:
        assert b["lower"] < b["confidence"] <= b["upper"]
        assert b["accuracy"] == pytest.approx(b["confidence"])


def test_ece_overconfident_model() -> None:
    # Always 0.99 confident, right half the time: ECE = |0.5 - 0.99| = 0.49.
    y = np.array([1, 0] * 50)
    m = probability_metrics(y, binary_probs([0.99] * 100), BIN)
    assert m["ece"] == pytest.approx(0.49)
    assert m["mce"] == pytest.approx(0.49)
    assert len(m["calibration_bins"]) == 1
    # Two bins with different gaps: ECE is the count-weighted mean, MCE the worst one.
    y2 = np.array([1, 0] * 50 + [1] * 100)
    m2 = probability_metrics(y2, binary_probs([0.99] * 100 + [0.55] * 100), BIN)
    assert m2["ece"] == pytest.approx((0.49 * 100 + 0.45 * 100) / 200)
    assert m2["mce"] == pytest.approx(0.49)


# --- plots -----------------------------------------------------------------------------


def _is_png(path: Path) -> bool:
    return path.stat().st_size > 1000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plots_write_png(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    y = np.array([0, 1] * 20)
    p = np.clip(0.3 + 0.4 * y + rng.normal(0, 0.2, 40), 0, 1)
    probs = binary_probs(list(p))
    assert _is_png(plot_roc(y, probs, BIN, tmp_path / "roc.png", "ROC"))
    assert _is_png(plot_reliability(y, probs, tmp_path / "sub" / "rel.png", "Reliability"))
    y3 = np.repeat([0, 1, 2], 10)
    p3 = rng.dirichlet([1, 1, 1], size=30)
    assert _is_png(plot_roc(y3, p3, ["a", "b", "c"], tmp_path / "roc3.png", "ROC"))
    # One class only: still a file, no exception.
    assert _is_png(
        plot_roc(np.ones(5, int), binary_probs([0.5] * 5), BIN, tmp_path / "r1.png", "x")
    )


# --- Grad-CAM --------------------------------------------------------------------------


class TinyCNN(nn.Module):
    """Conv(1->2, fixed) -> ReLU -> global mean -> Linear(2->2, fixed).

    Channel 0 is a 3x3 box blur of the image; channel 1 is its negative (zero after ReLU).
    Class 1's score is the mean of channel 0, so it grows with brightness; class 0's is minus it.
    """

    def __init__(self, as_object: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, kernel_size=3, padding=1)
        self.head = nn.Linear(2, 2)
        self.drop = nn.Dropout(0.5)  # must be off during Grad-CAM
        self.as_object = as_object
        assert self.conv.bias is not None
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0] = 1 / 9
            self.conv.weight[1] = -1 / 9
            self.conv.bias.zero_()
            self.head.weight.copy_(torch.tensor([[-1.0, 0.0], [1.0, 0.0]]))
            self.head.bias.zero_()

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor | SimpleNamespace:
        h = torch.relu(self.conv(pixel_values)).mean(dim=(2, 3))
        logits = self.head(self.drop(h))
        return SimpleNamespace(logits=logits) if self.as_object else logits


SIZE, SQ = 32, 6
CORNERS = [(2, 3), (2, 24), (23, 2), (25, 25)]  # top-left of the bright square per image


def squares() -> torch.Tensor:
    x = torch.full((len(CORNERS), 1, SIZE, SIZE), 0.05)
    for i, (r, c) in enumerate(CORNERS):
        x[i, 0, r : r + SQ, c : c + SQ] = 1.0
    return x


def assert_peaks_in_squares(cam: torch.Tensor) -> None:
    assert cam.shape == (len(CORNERS), SIZE, SIZE)
    assert cam.dtype == torch.float32
    assert torch.isfinite(cam).all() and cam.min() >= 0 and cam.max() <= 1
    for i, (r, c) in enumerate(CORNERS):
        row, col = divmod(int(cam[i].argmax()), SIZE)
        assert r <= row < r + SQ and c <= col < c + SQ, (i, row, col)
        assert cam[i].max() == pytest.approx(1.0)


@pytest.mark.parametrize("as_object", [False, True])
def test_grad_cam_finds_the_bright_square_and_leaves_the_model_alone(as_object: bool) -> None:
    model = TinyCNN(as_object=as_object)
    model.train()
    model.head.bias.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    before = [p.detach().clone() for p in model.parameters()]
    assert last_conv_layer(model) is model.conv

    cam = grad_cam(model, squares())  # predicted class is 1 ("bright")
    assert_peaks_in_squares(cam)
    assert torch.equal(cam, grad_cam(model, squares(), model.conv, class_idx=1))

    assert model.training
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_grad_cam_negative_evidence_gives_zeros_not_nan() -> None:
    # Class 0's score falls with brightness: every weight is negative, ReLU leaves a flat map.
    cam = grad_cam(TinyCNN(), squares(), class_idx=0)
    assert torch.isfinite(cam).all()
    assert torch.count_nonzero(cam) == 0


def test_grad_cam_on_a_frozen_model() -> None:
    model = TinyCNN().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    assert_peaks_in_squares(grad_cam(model, squares()))
    assert not model.training
    assert all(not p.requires_grad and p.grad is None for p in model.parameters())


def test_grad_cam_on_a_bf16_model() -> None:
    model = TinyCNN().to(torch.bfloat16)
    assert_peaks_in_squares(grad_cam(model, squares()))


def test_last_conv_layer_skips_non_spatial_convs_and_none_without_conv() -> None:
    class WithSE(TinyCNN):
        """A 1x1 conv applied after pooling (like squeeze-excite) comes last in modules()."""

        def __init__(self) -> None:
            super().__init__()
            self.se = nn.Conv2d(2, 2, kernel_size=1)

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            a = torch.relu(self.conv(pixel_values))
            a = a * torch.sigmoid(self.se(a.mean(dim=(2, 3), keepdim=True)))
            return self.head(a.mean(dim=(2, 3)))

    model = WithSE().train()
    assert last_conv_layer(model) is model.se
    assert last_conv_layer(model, squares()) is model.conv
    assert model.training
    assert grad_cam(model, squares()).shape == (len(CORNERS), SIZE, SIZE)

    class NoConv(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(SIZE * SIZE, 2)

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            return self.fc(pixel_values.flatten(1))

    assert last_conv_layer(NoConv()) is None
    with pytest.raises(ValueError, match="no nn.Conv2d"):
        grad_cam(NoConv(), squares())


def test_gradcam_grid_writes_png(tmp_path: Path) -> None:
    x = squares()
    cam = grad_cam(TinyCNN(), x).numpy()
    gray = (x[:, 0].numpy() * 255).astype(np.uint8)
    titles = [f"true pneumonia / pred normal 0.{80 + i}" for i in range(len(gray))]
    assert _is_png(plot_gradcam_grid(gray, cam, titles, tmp_path / "g.png", cols=3))
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    half = cam[:, ::2, ::2]  # heat maps at another resolution are stretched to the image
    assert _is_png(plot_gradcam_grid(rgb, half, titles, tmp_path / "g_rgb.png"))
