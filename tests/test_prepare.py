"""`medsam prepare`: folders, NIfTI pairs and DICOM series into the seed's training layout."""

from __future__ import annotations

import shutil

import nibabel as nib
import numpy as np
import pydicom

from medsam_core.prepare import prepare_folder
from medsam_core.training.folder import folder_samples
from tests.conftest import first_pairs
from tests.test_imageio import _dicom


def check_layout(out, names, size):
    assert sorted(p.stem for p in (out / "imgs").glob("*.npy")) == sorted(names)
    for name in names:
        img = np.load(out / "imgs" / f"{name}.npy", allow_pickle=False)
        gts = np.load(out / "gts" / f"{name}.npy", allow_pickle=False)
        assert img.shape == (size, size, 3) and img.dtype == np.float32 and 0 <= img.min() and img.max() <= 1
        assert gts.shape == (size, size) and gts.dtype == np.uint8 and gts.any()


def test_png_pairs(sample_data, tmp_path, run_medsam):
    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    (src / "masks").mkdir()
    for image, mask in first_pairs(sample_data, "kvasir", 2):
        shutil.copy(image, src / "images")
        shutil.copy(mask, src / "masks")
    result = run_medsam("prepare", str(src), "--out", str(tmp_path / "out"), "--size", "256")
    assert result.returncode == 0, result.stderr
    assert "wrote 2 slices" in result.stdout
    check_layout(tmp_path / "out", [p.stem for p in (src / "images").iterdir()], 256)
    assert len(folder_samples(tmp_path / "out")) == 2  # medsam train reads what prepare writes


def test_nifti_volume_drops_empty_slices_and_small_objects(tmp_path):
    src = tmp_path / "src"
    (src / "imagesTr").mkdir(parents=True)
    (src / "labelsTr").mkdir()
    volume = np.random.default_rng(0).normal(40, 30, (64, 48, 4)).astype(np.float32)  # (x, y, z)
    labels = np.zeros((64, 48, 4), np.uint8)
    labels[10:40, 5:30, 1] = 1  # a real object on slice 1
    labels[0:3, 0:3, 2] = 2  # a 9-pixel speck on slice 2: dropped, so slice 2 goes too
    nib.save(nib.Nifti1Image(volume, np.eye(4)), src / "imagesTr" / "liver_007_0000.nii.gz")
    nib.save(nib.Nifti1Image(labels, np.eye(4)), src / "labelsTr" / "liver_007.nii.gz")
    report = prepare_folder(src, tmp_path / "out", window="abdomen", size=128, min_object_px=50)
    assert (report.written, report.objects_dropped) == (1, 1)
    check_layout(tmp_path / "out", ["liver_007-001"], 128)
    gts = np.load(tmp_path / "out" / "gts" / "liver_007-001.npy", allow_pickle=False)
    ys, xs = np.nonzero(gts)  # the object spans x 10..39 of 64 and y 5..29 of 48, scaled to 128
    assert 15 <= xs.min() <= 25 and 75 <= xs.max() <= 82 and 10 <= ys.min() <= 16 and 75 <= ys.max() <= 82


def test_dicom_series_with_label_volume(tmp_path):
    src = tmp_path / "src"
    series = src / "images" / "case1"
    series.mkdir(parents=True)
    for z in (2, 0, 1):  # written out of order: the reader sorts by position
        path = _dicom(series / f"slice{z}.dcm", np.full((32, 40), 100 + z, np.int16), slope=1, intercept=-1024)
        ds = pydicom.dcmread(path)
        ds.ImagePositionPatient = [0, 0, float(z)]
        ds.InstanceNumber = z + 1
        ds.save_as(path)
    labels = np.zeros((40, 32, 3), np.uint8)  # NIfTI (x, y, z)
    labels[5:35, 5:25, 2] = 3
    (src / "labels").mkdir()
    nib.save(nib.Nifti1Image(labels, np.eye(4)), src / "labels" / "case1.nii.gz")
    report = prepare_folder(src, tmp_path / "out", size=64, min_object_px=10)
    assert report.written == 1 and report.slices_without_labels == 2
    check_layout(tmp_path / "out", ["case1-002"], 64)
    assert set(np.unique(np.load(tmp_path / "out" / "gts" / "case1-002.npy", allow_pickle=False))) == {0, 3}


def test_prepare_refuses_unknown_layouts(tmp_path, run_medsam):
    result = run_medsam("prepare", str(tmp_path), "--out", str(tmp_path / "o"))
    assert result.returncode == 1 and "found no image/label pairs" in result.stderr
