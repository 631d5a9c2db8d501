"""``medsam segment --propagate`` and ``medsam evaluate --volumes`` as a user runs them, on BRATS.

Short z ranges keep the encodes few; the CLI shares the session's data folder, so slices the
propagation tests encoded are cache hits here.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medsam_core.metrics import dice
from medsam_core.volume_evaluation import prompt_for

CASE = "brats_2013_pat0005_1"
HALF_RANGE = 3


@pytest.fixture(scope="module")
def brats(sample_data):
    root = sample_data / "volumes" / "brats"
    image, labels = root / "images" / f"{CASE}.nii.gz", root / "labels" / f"{CASE}.nii.gz"
    assert image.is_file() and labels.is_file(), f"BRATS volume missing under {root}"
    truth = np.transpose(np.asarray(nib.load(labels).dataobj), (2, 1, 0)) > 0  # (Z, rows, columns)
    prompt = prompt_for(truth, 1)
    assert prompt is not None
    return image, labels, truth, prompt


def test_segment_propagate_writes_nifti_on_the_input_grid(brats, run_medsam, tmp_path):
    image, _, truth, prompt = brats
    z0, z1 = prompt.key_slice - HALF_RANGE, prompt.key_slice + HALF_RANGE
    out = tmp_path / "out"
    box = [str(v) for v in prompt.box]
    args = ["--slice", str(prompt.key_slice), "--z-range", str(z0), str(z1), "--out", str(out), "--json"]
    proc = run_medsam("segment", str(image), "--propagate", "--box", *box, *args)
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout.strip().splitlines()[-1])
    assert sorted(record["objects"][0]["slices"]) == list(range(z0, z1 + 1))
    assert set(record["objects"][0]["area"]) == {str(z) for z in range(z0, z1 + 1)}
    assert record["encoded_slices"] == z1 - z0 + 1
    assert record["mask_nifti"] == str(out / f"{CASE}_mask.nii.gz")

    source, written = nib.load(image), nib.load(record["mask_nifti"])
    assert written.shape == source.shape
    assert np.allclose(written.affine, source.affine)
    assert written.get_data_dtype() == np.uint8
    labels = np.load(record["mask_npy"], allow_pickle=False)
    assert labels.shape == truth.shape and labels.dtype == np.uint8
    assert np.array_equal(np.transpose(np.asarray(written.dataobj), (2, 1, 0)), labels)
    assert not labels[:z0].any() and not labels[z1 + 1 :].any()
    for z in range(z0, z1 + 1):
        assert int((labels[z] > 0).sum()) == record["objects"][0]["area"][str(z)]
    assert dice(labels[z0 : z1 + 1] > 0, truth[z0 : z1 + 1]) >= 0.85


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--box", "300", "300", "400", "400", "--slice", "90"], "wholly outside the 240x240"),
        (["--box", "60", "60", "120", "120", "--slice", "155"], "out of range"),
        (["--box", "60", "60", "120", "120", "--slice", "90", "--z-range", "95", "85"], "reversed"),
        (["--slice", "90"], "needs a --box"),
    ],
)
def test_segment_propagate_refuses_bad_input_and_writes_nothing(brats, run_medsam, tmp_path, extra, message):
    out = tmp_path / "out"
    proc = run_medsam("segment", str(brats[0]), "--propagate", *extra, "--out", str(out))
    assert proc.returncode == 1
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()


def crop_case(image: Path, labels: Path, z0: int, z1: int, folder: Path, case: str) -> np.ndarray:
    """A few slices of a BRATS case in nnU-Net's layout, geometry kept through nibabel's slicer."""
    for source, target in (
        (image, folder / "imagesTr" / f"{case}_0000.nii.gz"),
        (labels, folder / "labelsTr" / f"{case}.nii.gz"),
    ):
        target.parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.load(source).slicer[:, :, z0 : z1 + 1], target)
    return np.asarray(nib.load(folder / "labelsTr" / f"{case}.nii.gz").dataobj)


def test_evaluate_volumes_summary(brats, run_medsam, tmp_path):
    image, labels, _, prompt = brats
    z0, z1 = prompt.key_slice - HALF_RANGE, prompt.key_slice + HALF_RANGE
    cropped = crop_case(image, labels, z0, z1, tmp_path, "brats_a")
    crop_case(image, labels, z0, z1, tmp_path, "brats_b")  # not evaluated: --limit 1
    proc = run_medsam("evaluate", str(tmp_path), "--volumes", "--limit", "1", "--json")
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 2
    case, summary = lines
    values = sorted(int(v) for v in np.unique(cropped) if v > 0)
    assert case["case"] == "brats_a"
    assert [o["label"] for o in case["objects"]] == values  # each label value is one object
    assert case["encoded_slices"] == z1 - z0 + 1  # one encode per slice for all objects
    assert {"mean_dice", "mean_nsd", "cases", "objects"} <= set(summary)
    assert summary["cases"] == 1 and summary["objects"] == len(values)
    assert 0.0 < summary["mean_nsd"] <= 1.0

    binary = run_medsam("evaluate", str(tmp_path), "--volumes", "--binary", "--limit", "1", "--json")
    assert binary.returncode == 0, binary.stderr
    case, summary = [json.loads(line) for line in binary.stdout.splitlines() if line.startswith("{")]
    assert summary["objects"] == 1 and case["objects"][0]["z_range"] == [0, z1 - z0]
    assert summary["mean_dice"] >= 0.85


def test_evaluate_volumes_refuses_a_folder_without_volumes(run_medsam, tmp_path):
    (tmp_path / "images").mkdir()
    proc = run_medsam("evaluate", str(tmp_path), "--volumes")
    assert proc.returncode == 1
    assert "neither images/ + labels/" in proc.stderr
