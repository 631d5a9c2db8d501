"""Propagation: the CVPR24 scheme's rules on a scripted decoder, then the real model on a BRATS volume.

The scripted decoder stands in for the model only where the point is the order of
slices and the box each one gets; accuracy is checked through the real LiteMedSAM.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from medsam_core.errors import MedsamError, PromptError
from medsam_core.predictor import Prediction
from medsam_core.propagation import (
    SliceEncoder,
    check_range,
    key_slice_of,
    largest_component,
    mask_box,
    propagate,
)
from medsam_core.volume_evaluation import find_volume_pairs, prompt_for

CASE = "brats_2013_pat0005_1"
HALF_RANGE = 4  # slices each side of the key slice: 9 encodes, shared by every test here


class SliceRef:
    """Stands in for a slice's embedding: its number and size are all the scripted decoder needs."""

    original_size = (40, 40)

    def __init__(self, z: int):
        self.z = z


class Scripted:
    """Answers each slice with a mask from a table and records the box it was prompted with."""

    def __init__(self, masks: dict[int, np.ndarray]):
        self.masks = masks
        self.calls: list[tuple[int, list[float], bool]] = []

    def decode(self, embedding, boxes=None, mask_input=None, **_):
        z = embedding.z
        self.calls.append((z, [float(v) for v in np.asarray(boxes)[0]], mask_input is not None))
        return Prediction(
            masks=self.masks[z][None].copy(),
            low_res_logits=np.zeros((1, 1, 256, 256), np.float32),
            iou=np.array([0.9 if self.masks[z].any() else 0.1], np.float32),
        )


def scripted_run(masks: dict[int, np.ndarray], scheme: str):
    decoder = Scripted(masks)
    progress: list[tuple[int, int]] = []
    result = propagate(
        decoder,  # type: ignore[arg-type]
        SliceRef,  # type: ignore[arg-type]
        7,
        3,
        [10, 10, 20, 20],
        (0, 6),
        scheme=scheme,
        on_slice=lambda done, total: progress.append((done, total)),
    )
    return result, decoder.calls, progress


def square(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    m = np.zeros((40, 40), bool)
    m[y0 : y1 + 1, x0 : x1 + 1] = True
    return m


def test_cvpr24_order_neighbour_box_and_key_box_fallback():
    empty = np.zeros((40, 40), bool)
    masks = {0: square(1, 1, 2, 2), 1: empty, 2: square(12, 12, 18, 18), 3: square(11, 11, 19, 19)}
    masks |= {4: square(13, 14, 17, 16), 5: empty, 6: square(5, 5, 8, 8)}
    result, calls, progress = scripted_run(masks, "cvpr24")
    # The key slice first; then up to z_max and down from key - 1, side by side, each in its own order.
    zs = [z for z, _, _ in calls]
    assert zs[0] == 3 and [z for z in zs if z > 3] == [4, 5, 6] and [z for z in zs if z < 3] == [2, 1, 0]
    boxes = {z: box for z, box, _ in calls}
    assert boxes[3] == [10, 10, 20, 20]  # the user's box
    assert boxes[4] == [8, 8, 22, 22]  # slice 3's mask box widened by 3 px
    assert boxes[5] == [10, 11, 20, 19]  # slice 4's
    assert boxes[6] == [10, 10, 20, 20]  # slice 5 came out empty: back to the key box
    assert boxes[2] == [8, 8, 22, 22]  # going down starts again from the key slice's mask
    assert boxes[0] == [10, 10, 20, 20]  # slice 1 empty: key box again
    assert not any(mi for _, _, mi in calls)  # the baseline feeds no mask_input
    assert result.slices == [3, 4, 5, 6, 2, 1, 0]
    assert result.masks[6].any() and result.masks[0].any()
    assert progress[-1] == (7, 7)


def test_refined_stops_where_the_mask_vanishes():
    empty = np.zeros((40, 40), bool)
    masks = {0: square(1, 1, 2, 2), 1: empty, 2: square(12, 12, 18, 18), 3: square(11, 11, 19, 19)}
    masks |= {4: square(13, 14, 17, 16), 5: empty, 6: square(5, 5, 8, 8)}
    result, calls, progress = scripted_run(masks, "refined")
    # Nothing decoded past an empty slice. The directions run side by side, so their calls interleave:
    # the order holds within each direction.
    zs = [z for z, _, _ in calls]
    assert zs[0] == 3 and sorted(zs) == [1, 2, 3, 4, 5]
    assert [z for z in zs if z > 3] == [4, 5] and [z for z in zs if z < 3] == [2, 1]
    assert result.slices == [3, 4, 5, 2, 1]  # reported key, up, then down, whatever the interleaving
    assert result.stopped == {"up": 5, "down": 1}
    assert not result.masks[6].any() and not result.masks[0].any()
    assert progress[-1] == (7, 7)  # skipped slices still complete the progress


def test_cancel_from_progress_callback():
    masks = {z: square(10, 10, 20, 20) for z in range(7)}

    class Cancelled(Exception):
        pass

    def stop(done, total):
        if done == 3:
            raise Cancelled

    decoder = Scripted(masks)
    with pytest.raises(Cancelled):
        propagate(decoder, SliceRef, 7, 3, [10, 10, 20, 20], on_slice=stop)  # type: ignore[arg-type]
    # The two directions run side by side: the other one may have had one decode under way.
    assert 3 <= len(decoder.calls) <= 4


class Broken(Scripted):
    """Fails on one slice, as a decoder can (out of memory, a bad embedding)."""

    def __init__(self, masks, bad: int):
        super().__init__(masks)
        self.bad = bad

    def decode(self, embedding, boxes=None, mask_input=None, **kw):
        time.sleep(0.01)  # as a real decode does, this lets the other direction's thread run
        if embedding.z == self.bad:
            raise MedsamError(f"slice {self.bad} broke")
        return super().decode(embedding, boxes=boxes, mask_input=mask_input, **kw)


@pytest.mark.parametrize(("key", "bad"), [(3, 1), (42, 43)])
def test_a_failing_direction_fails_the_run_and_stops_the_other(key, bad):
    """Down fails at its second slice while up has 41 to go (then up fails at its first while down
    has 42): the error is the broken slice's, not a half result, and the healthy direction stops
    instead of decoding the other 40 slices."""
    masks = {z: square(10, 10, 20, 20) for z in range(45)}
    decoder = Broken(masks, bad)
    with pytest.raises(MedsamError, match=f"slice {bad} broke"):
        propagate(decoder, SliceRef, 45, key, [10, 10, 20, 20])  # type: ignore[arg-type]
    assert len(decoder.calls) < 20


def test_range_checks_say_what_is_wrong():
    assert check_range(10, 4, None) == (0, 9)
    assert check_range(10, 4, (2, 6)) == (2, 6)
    with pytest.raises(PromptError, match="reversed"):
        check_range(10, 4, (6, 2))
    with pytest.raises(PromptError, match="out of range"):
        check_range(10, 10, None)
    with pytest.raises(PromptError, match="leaves the volume"):
        check_range(10, 4, (2, 10))
    with pytest.raises(PromptError, match="outside the z range"):
        check_range(10, 1, (2, 6))
    with pytest.raises(MedsamError, match="unknown propagation scheme"):
        propagate(None, SliceRef, 10, 4, [1, 1, 5, 5], scheme="magic")  # type: ignore[arg-type]


def test_helpers():
    assert key_slice_of(59, 134) == 96 and key_slice_of(3, 3) == 3
    assert mask_box(np.zeros((5, 5), bool), 3) is None
    assert mask_box(square(1, 2, 30, 38), 3).tolist() == [0, 0, 33, 40]
    blobs = np.zeros((4, 10, 10), bool)
    blobs[0:3, 1:4, 1:4] = True
    blobs[3, 8, 8] = True
    kept = largest_component(blobs)
    assert kept.sum() == 27 and not kept[3, 8, 8]


def test_volume_layouts_and_prompt(tmp_path: Path):
    for folder in ("imagesTr", "labelsTr"):
        (tmp_path / folder).mkdir()
    (tmp_path / "imagesTr" / "liver_7_0000.nii.gz").write_bytes(b"")
    (tmp_path / "labelsTr" / "liver_7.nii.gz").write_bytes(b"")
    (tmp_path / "imagesTr" / "orphan_0000.nii.gz").write_bytes(b"")
    pairs = find_volume_pairs(tmp_path)
    assert [(p.case, p.image.name, p.labels.name) for p in pairs] == [
        ("liver_7", "liver_7_0000.nii.gz", "liver_7.nii.gz")
    ]
    with pytest.raises(MedsamError, match="neither images/"):
        find_volume_pairs(tmp_path / "imagesTr")
    mask = np.zeros((9, 20, 20), bool)
    mask[2:7, 5:9, 3:12] = True
    mask[4, 2, 15] = True
    prompt = prompt_for(mask, 1)
    assert prompt is not None
    assert (prompt.z_range, prompt.key_slice, prompt.box) == ((2, 6), 4, (3, 2, 15, 8))


@pytest.fixture(scope="session")
def brats_slices(sample_data, predictor):
    """Pat0005 around the key slice of its tumour: each slice encoded once for the session."""
    import nibabel as nib

    from medsam_core.volume import labels_onto, read_volume

    root = sample_data / "volumes" / "brats"
    assert (root / "images" / f"{CASE}.nii.gz").is_file(), f"BRATS volume missing under {root}"
    volume = read_volume(root / "images" / f"{CASE}.nii.gz")
    truth = labels_onto(volume, nib.load(root / "labels" / f"{CASE}.nii.gz")) > 0
    prompt = prompt_for(truth, 1)
    assert prompt is not None
    return SliceEncoder(predictor, lambda z: volume.slice_image(z).display()), truth, prompt


@pytest.mark.parametrize("scheme, floor", [("refined", 0.85), ("cvpr24", 0.85)])
def test_real_model_on_brats(brats_slices, predictor, scheme, floor):
    encoder, truth, prompt = brats_slices
    z0, z1 = prompt.key_slice - HALF_RANGE, prompt.key_slice + HALF_RANGE
    result = propagate(predictor, encoder, truth.shape[0], prompt.key_slice, prompt.box, (z0, z1), scheme=scheme)
    assert sorted(result.slices) == list(range(z0, z1 + 1))
    assert not result.masks[:z0].any() and not result.masks[z1 + 1 :].any()
    from medsam_core.metrics import dice

    assert dice(result.masks[z0 : z1 + 1], truth[z0 : z1 + 1]) >= floor
    assert encoder.slices == z1 - z0 + 1  # one encode per slice, whatever the number of runs
