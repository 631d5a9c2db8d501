"""The two CLI contracts, run as a user runs them: the installed ``medsam`` script."""

from __future__ import annotations

import json
import pickle  # noqa: F401  (documents that the hostile npy below is a pickle)

import numpy as np
import pytest
from PIL import Image

from tests.conftest import DEMO_BOX, DEMO_IMAGE, first_pairs

BOX = [str(v) for v in DEMO_BOX]


def json_lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def test_segment_single_box_contract(run_medsam, tmp_path):
    result = run_medsam("segment", str(DEMO_IMAGE), "--box", *BOX, "--out", str(tmp_path), "--json")
    assert result.returncode == 0, result.stderr
    (record,) = json_lines(result.stdout)
    for field in ("mask_npy", "mask_png", "overlay_png", "area", "predicted_iou", "encode_ms", "decode_ms"):
        assert field in record
    mask = np.load(tmp_path / "ct_abdomen_mask.npy", allow_pickle=False)
    assert mask.shape == (512, 512) and mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1}
    assert record["area"] == int(mask.sum())
    png = np.asarray(Image.open(tmp_path / "ct_abdomen_mask.png"))
    assert set(np.unique(png)) == {0, 255} and np.array_equal(png > 0, mask > 0)
    overlay = Image.open(tmp_path / "ct_abdomen_overlay.png")
    assert overlay.size == (512, 512) and overlay.mode == "RGB"


def test_segment_several_boxes_gives_a_label_map_and_palette(run_medsam, tmp_path):
    result = run_medsam(
        "segment", str(DEMO_IMAGE), "--box", *BOX, "--box", "300", "240", "420", "360", "--out", str(tmp_path), "--json"
    )
    assert result.returncode == 0, result.stderr
    (record,) = json_lines(result.stdout)
    mask = np.load(record["mask_npy"], allow_pickle=False)
    assert set(np.unique(mask)) == {0, 1, 2}
    assert len(record["areas"]) == 2 and len(record["predicted_iou"]) == 2
    png = Image.open(record["mask_png"])
    assert png.mode == "P" and np.array_equal(np.asarray(png), mask)


def test_segment_many_images_one_json_line_each(run_medsam, tmp_path, sample_data):
    images = [str(p) for p, _ in first_pairs(sample_data, "kvasir", 2)]
    result = run_medsam("segment", *images, "--box", "50", "50", "300", "300", "--out", str(tmp_path), "--json")
    assert result.returncode == 0, result.stderr
    records = json_lines(result.stdout)
    assert [r["image"] for r in records] == images
    assert all((tmp_path / f"{p.split('/')[-1][:-4]}_mask.npy").exists() for p in images)


def test_segment_bad_input_writes_nothing(run_medsam, tmp_path):
    np.save(tmp_path / "pickled.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    out = tmp_path / "out"
    # One good and one hostile file: the request is refused whole.
    result = run_medsam("segment", str(DEMO_IMAGE), str(tmp_path / "pickled.npy"), "--box", *BOX, "--out", str(out))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "pickled.npy" in result.stderr
    assert "nothing was written" in result.stderr
    assert not out.exists()


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--box", "600", "600", "700", "700"], "wholly outside the 512x512 image"),
        (["--box", *BOX, "--box", "1", "1", "50", "50", "--point", "10", "10", "1"], "at most one --box"),
        (["--point", "10", "10", "7"], "label 7"),
        ([], "at least one --box"),
        (["--box", *BOX, "--model", "vit_z"], "unknown model family 'vit_z'"),
        (["--box", *BOX, "--model", "sam_vit_b"], "--checkpoint"),
        (["--box", *BOX, "--window", "liver"], "unknown window 'liver'"),
    ],
)
def test_segment_argument_errors_are_plain(run_medsam, tmp_path, args, fragment):
    result = run_medsam("segment", str(DEMO_IMAGE), *args, "--out", str(tmp_path / "o"))
    assert result.returncode != 0
    assert fragment in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "o").exists()


def test_segment_nifti_volume_slice_with_window(run_medsam, tmp_path):
    import nibabel as nib

    volume = np.full((64, 48, 5), -1000, np.int16)  # air, in (x, y, z)
    volume[10:40, 20:40, 3] = 60  # soft tissue on slice 3 only: x 10..39, y 20..39
    nib.save(nib.Nifti1Image(volume, np.eye(4)), tmp_path / "vol.nii.gz")
    result = run_medsam(
        "segment",
        str(tmp_path / "vol.nii.gz"),
        "--slice",
        "3",
        "--window",
        "abdomen",
        "--box",
        "8",
        "18",
        "42",
        "42",
        "--out",
        str(tmp_path / "o"),
        "--json",
    )
    assert result.returncode == 0, result.stderr
    (record,) = json_lines(result.stdout)
    assert record["slice"] == 3 and (record["height"], record["width"]) == (48, 64)
    mask = np.load(tmp_path / "o" / "vol_mask.npy", allow_pickle=False)
    assert mask[30, 25] == 1 and mask[5, 5] == 0


def test_evaluate_kvasir_first_20(run_medsam, sample_data):
    result = run_medsam("evaluate", str(sample_data / "kvasir"), "--limit", "20", "--json")
    assert result.returncode == 0, result.stderr
    lines = json_lines(result.stdout)
    assert len(lines) == 21 and lines[-1]["images"] == 20
    assert lines[-1]["mean_dice"] >= 0.85, lines[-1]
    assert all(0 <= r["dice"] <= 1 and 0 <= r["nsd"] <= 1 for r in lines[:-1])


def test_evaluate_busi_first_20(run_medsam, sample_data):
    result = run_medsam("evaluate", str(sample_data / "busi"), "--limit", "20", "--json")
    assert result.returncode == 0, result.stderr
    summary = json_lines(result.stdout)[-1]
    assert summary["images"] == 20 and summary["mean_dice"] >= 0.90, summary


def test_evaluate_npy_layout_with_seeded_jitter(run_medsam, tmp_path, sample_data):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "gts").mkdir()
    for image, mask in first_pairs(sample_data, "kvasir", 3):
        rgb = np.asarray(Image.open(image).convert("RGB"), dtype=np.float32) / 255.0  # MedSAM's [0, 1] floats
        np.save(tmp_path / "imgs" / f"{image.stem}.npy", rgb)
        np.save(tmp_path / "gts" / f"{image.stem}.npy", (np.asarray(Image.open(mask)) > 127).astype(np.uint8))
    runs = [
        run_medsam("evaluate", str(tmp_path), "--box-jitter", "20", "--seed", seed, "--json") for seed in ("5", "5")
    ]
    for r in runs:
        assert r.returncode == 0, r.stderr
    a, b = (json_lines(r.stdout) for r in runs)
    assert a[-1]["images"] == 3 and a[-1]["mean_dice"] > 0.7
    assert [x["dice"] for x in a[:-1]] == [x["dice"] for x in b[:-1]]  # same seed, same boxes, same result


def test_evaluate_jitter_changes_with_seed():
    from medsam_core.evaluation import boxes_from_labels

    labels = np.zeros((100, 100), np.uint8)
    labels[40:60, 30:70] = 1
    labels[5:10, 5:10] = 2
    values, tight = boxes_from_labels(labels, 0, np.random.default_rng(0))
    assert values == [1, 2] and tight.tolist()[0] == [30, 40, 69, 59]
    j1 = boxes_from_labels(labels, 10, np.random.default_rng(1))[1]
    j2 = boxes_from_labels(labels, 10, np.random.default_rng(2))[1]
    assert not np.array_equal(j1, j2)
    assert (j1[:, :2] <= tight[:, :2]).all() and (j1[:, 2:] >= tight[:, 2:]).all()
    assert (j1[0, :2] >= tight[0, :2] - 10).all()


def test_evaluate_refuses_unknown_layout(run_medsam, tmp_path):
    result = run_medsam("evaluate", str(tmp_path))
    assert result.returncode == 1 and "images/ + masks/" in result.stderr
