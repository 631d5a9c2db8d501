"""One colour per label class (``portal.store.label_colours``), in the project, the files and the export."""

from __future__ import annotations

import io
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from medsam_core.evaluation import read_labels
from medsam_core.outputs import PALETTE, mask_png
from portal.store.label_colours import default_colour, label_colour, label_palette, rgb_of
from portal.store.models import Role
from portal.store.services import annotations, images, projects
from portal.web.transfer import build_export, import_zip, scratch_dir
from tests.storeutil import new_user, png_file, square_mask, store_per_database, tx

CLASSES = [{"name": "liver", "color": "#00c0ff"}, {"name": "kidney"}, "spleen"]


def test_a_class_keeps_its_colour_and_the_others_get_the_default_of_their_place():
    assert label_colour(CLASSES, "liver") == "#00c0ff"
    assert label_colour(CLASSES, "kidney") == default_colour(1) == "#{:02x}{:02x}{:02x}".format(*PALETTE[1])
    assert label_colour(CLASSES, "spleen") == default_colour(2)
    assert label_palette(CLASSES) == [(0, 192, 255), rgb_of(default_colour(1)), rgb_of(default_colour(2))]


def test_a_label_outside_the_classes_always_gets_the_same_default():
    first = label_colour(CLASSES, "gone")
    assert first == label_colour(CLASSES, "gone") == label_colour(None, "gone")
    assert first in {default_colour(i) for i in range(len(PALETTE))}


def test_new_projects_store_the_same_defaults(tmp_path):
    from portal.store.services.projects import _label_classes

    stored = _label_classes(["a", {"name": "b", "color": "#123456"}, "c"])
    assert [c["color"] for c in stored] == [default_colour(0), "#123456", default_colour(2)]
    assert all(label_colour(stored, c["name"]) == c["color"] for c in stored)


def test_a_palette_png_shows_the_label_colour_and_keeps_the_label_values(tmp_path):
    labels = square_mask((32, 32), 4, 4, 10)
    path = tmp_path / "m.png"
    mask_png(labels, 1, [(0, 192, 255)]).save(path)
    with PILImage.open(path) as im:
        assert im.mode == "P"
        assert im.convert("RGB").getpixel((5, 5)) == (0, 192, 255)
        assert im.convert("RGB").getpixel((20, 20)) == (0, 0, 0)
    assert np.array_equal(read_labels(path), labels)  # the values, not the colour's grey level


@pytest.fixture(scope="module", params=["sqlite"])
def store(request, tmp_path_factory):
    yield from store_per_database(request, tmp_path_factory, "colours")


def test_the_png_export_draws_each_label_in_its_project_colour_and_imports_back(store, tmp_path):
    admin = new_user(store, Role.admin, "admin")
    with store.transaction() as session:
        project = projects.create_project(session, admin, "Colours", "ct", CLASSES)
    image = png_file(tmp_path, 5, (40, 50))
    (row,) = tx(store, images.add_image, store.blobs, store.settings, admin, project.id, image)
    for label, x0 in (("liver", 2), ("kidney", 30)):
        tx(store, annotations.save_revision, store.blobs, admin, row.id, label, square_mask((40, 50), x0, 5, 12), 0)
    folder = Path(tempfile.mkdtemp(dir=scratch_dir(store.settings)))
    try:
        zip_path = build_export(store, admin, project.id, "png", False, 64, folder)
        with zipfile.ZipFile(zip_path) as zf:
            names = {n.split("/")[1]: n for n in zf.namelist() if n.startswith("masks/")}
            for label in ("liver", "kidney"):
                with PILImage.open(io.BytesIO(zf.read(names[label]))) as im:
                    assert im.mode == "P"
                    assert set(np.unique(np.asarray(im))) == {0, 1}
                    colours = {c for _, c in im.convert("RGB").getcolors()}
                    assert rgb_of(label_colour(CLASSES, label)) in colours, (label, colours)
        with store.transaction() as session:
            other = projects.create_project(session, admin, "Colours again", "ct", CLASSES)
        (folder / "in").mkdir()
        report = import_zip(store, admin, other.id, zip_path, folder / "in", zip_path.name)
        assert report["images"] == 1 and report["annotations"] == 2
    finally:
        shutil.rmtree(folder)
