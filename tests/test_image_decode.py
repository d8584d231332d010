"""Images as people store them, decoded to what the model sees: uint8 (H, W) or (H, W, 3).

Scans come as 16-bit PNGs, arrays in CHW or with alpha, floats in [0, 1], palette images,
raw bytes or `datasets` Image dicts; each must give the same picture, and a bad one a
named error."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from finekit.data.images import decode_images, read_npz, to_uint8
from finekit.errors import DataError

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
GRAY = RNG.integers(0, 256, size=(5, 7), dtype=np.uint8)


@pytest.mark.parametrize(
    ("stored", "expected"),
    [
        (RGB, RGB),
        (GRAY, GRAY),
        (np.moveaxis(RGB, -1, 0), RGB),  # CHW (PyTorch layout)
        (GRAY[None], GRAY),  # 1HW
        (GRAY[..., None], GRAY),  # HW1
        (np.concatenate([RGB, np.full((5, 7, 1), 255, np.uint8)], -1), RGB),  # RGBA: alpha off
        (RGB.astype(np.float32) / 255.0, RGB),  # floats in [0, 1]
        (RGB.astype(np.float64), RGB),  # floats in [0, 255]
        (GRAY.astype(np.int64), GRAY),  # wide ints within 0..255
    ],
)
def test_array_layouts_and_types_give_the_same_picture(
    stored: np.ndarray, expected: np.ndarray
) -> None:
    out = to_uint8(stored)
    assert out.dtype == np.uint8 and out.shape == expected.shape
    np.testing.assert_array_equal(out, expected)


def test_wide_ranges_are_scaled_not_wrapped() -> None:
    twelve_bit = np.array([[0, 1024], [2048, 4095]], dtype=np.uint16)  # a CT-like range
    np.testing.assert_array_equal(to_uint8(twelve_bit), [[0, 64], [128, 255]])
    # uint8 casting would wrap 300 to 44; values above 255 are rescaled by the maximum.
    np.testing.assert_array_equal(to_uint8(np.array([[0, 150, 300]])), [[0, 128, 255]])
    np.testing.assert_array_equal(to_uint8(np.array([[np.nan, 0.5, 1.0]])), [[0, 128, 255]])
    with pytest.raises(ValueError, match=r"shape \(2, 3, 4, 5\) is not"):
        to_uint8(np.zeros((2, 3, 4, 5)))


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_files_bytes_and_dataset_dicts_decode_alike(tmp_path: Path) -> None:
    sixteen = Image.fromarray(np.array([[0, 1000], [3000, 4000]], dtype=np.uint16))
    palette = Image.fromarray(RGB).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    (tmp_path / "scan.png").write_bytes(_png(sixteen))
    (tmp_path / "pal.png").write_bytes(_png(palette))
    rows = pd.DataFrame(
        {
            "image": [
                str(tmp_path / "scan.png"),
                str(tmp_path / "pal.png"),
                _png(Image.fromarray(GRAY)),  # raw bytes
                {"bytes": _png(Image.fromarray(RGB)), "path": None},  # datasets' Image
                {"bytes": None, "path": str(tmp_path / "scan.png")},
            ],
            "label": [0, 1, 0, 1, 0],
        }
    )
    out, report = decode_images(rows, "image", "manifest.csv")
    scan, pal, gray, rgb, scan_again = out["image"].tolist()
    assert scan.dtype == np.uint8 and scan.shape == (2, 2)
    np.testing.assert_array_equal(scan, [[0, 64], [191, 255]])  # 16-bit, scaled by the max
    np.testing.assert_array_equal(scan_again, scan)
    # A palette image decodes to its colours, not its palette indices (0..3).
    assert pal.shape == (5, 7, 3) and pal.max() > 3
    np.testing.assert_array_equal(pal, np.asarray(palette.convert("RGB")))
    np.testing.assert_array_equal(gray, GRAY)
    np.testing.assert_array_equal(rgb, RGB)
    assert report["images"] == 5 and report["skipped"] == 0
    assert report["modes"] == {"grayscale": 3, "rgb": 2}


def test_bad_cells_are_named_or_skipped_and_counted(tmp_path: Path) -> None:
    rows = pd.DataFrame(
        {"image": [GRAY, "  ", 42, str(tmp_path / "gone.png"), b"\x89PNG cut"], "label": 0}
    )
    with pytest.raises(DataError, match=r"m\.csv: row 2 .*column 'image'.*an empty path"):
        decode_images(rows, "image", "m.csv")
    out, report = decode_images(rows, "image", "m.csv", on_bad="skip")
    assert len(out) == 1 and report["skipped"] == 4
    assert any(
        "a int is neither a path nor an image array" in s for s in report["skipped_examples"]
    )
    with pytest.raises(DataError, match=r"m\.csv: no readable image left \(1 skipped\)"):
        decode_images(rows.iloc[[1]], "image", "m.csv", on_bad="skip")


def test_npz_label_and_image_shapes_are_checked(tmp_path: Path) -> None:
    x = np.zeros((4, 6, 6), np.uint8)
    np.savez(tmp_path / "multi.npz", train_images=x, train_labels=np.zeros((4, 3)))
    with pytest.raises(DataError, match=r"train_labels has shape \(4, 3\); one label per image"):
        read_npz(str(tmp_path / "multi.npz"), "train")
    np.savez(tmp_path / "short.npz", train_images=x[:3], train_labels=np.zeros((4, 1)))
    with pytest.raises(DataError, match=r"train_images has shape \(3, 6, 6\) for 4 labels"):
        read_npz(str(tmp_path / "short.npz"), "train")
    np.savez(tmp_path / "ok.npz", train_images=x, train_labels=np.arange(4)[:, None])
    with pytest.raises(DataError, match=r"has no test arrays \(it has splits \['train'\]\)"):
        read_npz(str(tmp_path / "ok.npz"), "test")
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(DataError, match=r"text\.npz is not a readable \.npz file"):
        read_npz(str(tmp_path / "text.npz"), "train")
