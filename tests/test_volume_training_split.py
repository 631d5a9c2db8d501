"""Fine-tuning on approved 3-D label maps: one 2-D sample per marked slice, split by volume, trainable."""

from __future__ import annotations

import uuid

import nibabel as nib
import numpy as np
import pytest

from medsam_core.models import load_model
from medsam_core.predictor import Predictor
from medsam_core.training import TrainConfig, Trainer, split_by_group
from portal.store.models import Role
from portal.store.services import annotations as ann
from portal.store.services import evaluations, images, projects, volumes, volumes_labels
from portal.store.services.training import validate_request
from tests.storeutil import new_user, png_file, square_mask, store_per_database, tx
from tests.volumeutil import tiny_brats, tumour_zhw
from workers.training_tasks import project_samples


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def store(request, tmp_path_factory):
    yield from store_per_database(request, tmp_path_factory, "vtrain")


@pytest.fixture(scope="module")
def project(store, sample_data, tmp_path_factory):
    """Three tiny BRATS crops (an empty slice in one), one 2-D image, and an unapproved map that must not count."""
    admin, reviewer = new_user(store, Role.admin), new_user(store, Role.reviewer)
    with store.transaction() as db:
        pid = projects.create_project(db, admin, f"vt-{uuid.uuid4().hex[:6]}", "mr", ["tumour", "oedema"]).id
        projects.add_member(db, admin, pid, reviewer)
    folder = tmp_path_factory.mktemp("crops")
    image, label = tiny_brats(sample_data, folder)
    volumes_out = {}
    for n, (z0, z1) in enumerate([(0, 4), (1, 4), (0, 3)]):
        path = folder / f"crop{n}.nii.gz"
        nib.save(_crop(image, z0, z1, n), path)
        added = tx(store, volumes.add_volume, store.blobs, store.settings, admin, pid, [path])
        truth = tumour_zhw(label)[z0:z1].copy()
        if n == 0:
            truth[1] = False  # an empty slice in the middle: no sample
        tumour = tx(
            store, volumes_labels.save_label_map, store.blobs, admin, added.volume.id, "tumour", truth, 0, submit=True
        )
        tx(store, ann.approve, reviewer, tumour.annotation_id)
        tx(store, volumes_labels.save_label_map, store.blobs, admin, added.volume.id, "oedema", truth, 0, submit=True)
        volumes_out[added.volume.id] = {"truth": truth, "slices": {s.slice_index: s for s in added.slices}}
    flat = tx(store, images.add_image, store.blobs, store.settings, admin, pid, png_file(folder, 7), "flat.png")[0]
    revision = tx(store, ann.save_revision, store.blobs, admin, flat.id, "tumour", square_mask(), 0, submit=True)
    tx(store, ann.approve, reviewer, revision.annotation_id)
    return {"pid": pid, "admin": admin, "volumes": volumes_out, "flat": flat}


def _crop(image, z0: int, z1: int, n: int):
    """Other z ranges, and other values per crop, so no two crops are the same content (one volume each)."""
    nii = nib.load(image).slicer[:, :, z0:z1]
    return nib.Nifti1Image(np.asanyarray(nii.dataobj) + float(n), nii.affine)


def test_each_marked_slice_of_an_approved_map_is_one_sample(store, project):
    samples = project_samples(store, project["pid"])
    by_key = {s.key: s for s in samples}
    assert len(by_key) == len(samples)  # the unapproved oedema maps gave nothing
    expected = {str(project["flat"].id)}
    for info in project["volumes"].values():
        marked = np.flatnonzero(info["truth"].any(axis=(1, 2)))
        expected |= {str(info["slices"][int(z)].id) for z in marked}
        for z in marked:
            sample = by_key[str(info["slices"][int(z)].id)]
            assert np.array_equal(sample.load_labels(), info["truth"][z].astype(np.uint8))
            assert sample.group == info["slices"][int(z)].sha256
            # the pixels the 2-D path shows (and encodes) for that slice row: one embedding cache entry
            assert np.array_equal(
                sample.load_rgb(), images.display_pixels(store.blobs, info["slices"][int(z)], store.settings)
            )
    assert set(by_key) == expected and len(samples) == 1 + 3 + 3 + 3  # crop 0 lost its empty slice


def test_the_split_never_puts_one_volume_on_both_sides(store, project):
    samples = project_samples(store, project["pid"])
    volume_of = {str(row.id): vid for vid, info in project["volumes"].items() for row in info["slices"].values()}
    for seed in range(8):
        train, val = split_by_group(samples, 0.34, seed)
        sides = {}
        for side, part in (("train", train), ("val", val)):
            for sample in part:
                sides.setdefault(volume_of.get(sample.key, sample.key), set()).add(side)
        assert all(len(s) == 1 for s in sides.values()) and train and val
    with store.transaction() as db:  # the frozen set a first fine-tune or evaluation takes: whole volumes
        frozen = set(evaluations.validation_set(db, store.blobs, project["pid"], 4))
    for info in project["volumes"].values():
        keys = {s.id for s in info["slices"].values() if info["truth"][s.slice_index].any()}
        assert keys <= frozen or not keys & frozen
    with store.transaction() as db:  # the request's own check counts slices, not volumes
        assert validate_request(db, store.blobs, store.settings, project["admin"], project["pid"], {})["epochs"] == 5


@pytest.mark.parametrize("store", ["sqlite"], indirect=True)  # the trainer sees no database: once is enough
def test_slice_samples_train_in_decoder_mode(store, project, shared_cache, data_dir):
    samples = project_samples(store, project["pid"])
    with store.transaction() as db:
        frozen = {str(i) for i in evaluations.validation_set(db, store.blobs, project["pid"], 4)}
    train, val = split_by_group(samples, 0, fixed_val_keys=frozen)
    model = load_model("lite", device="cpu")  # its own: training changes it in place
    predictor = Predictor(model, shared_cache, backend="onnx", onnx_dir=data_dir / "onnx")
    config = TrainConfig(mode="decoder", epochs=1, batch_size=4, seed=0)
    result = Trainer(model, config, predictor).fit(train, val)
    assert len(result.history) == 1 and 0 <= result.history[0]["val_dice"] <= 1
    assert (result.train_images, result.val_images) == (len(train), len(val))  # every slice sample has an object
