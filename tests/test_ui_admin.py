"""The pure parts of the admin-side tabs: curves, the version table, tabs by role, failures as status text."""

from __future__ import annotations

from datetime import datetime
from types import SimpleNamespace

import gradio as gr

from medsam_core.errors import MedsamError
from portal.store.models import Role
from portal.web.ui.common import reported
from portal.web.ui.portal import TABS, tab_visibility
from portal.web.ui.train import curves
from portal.web.ui.versions import version_table


def test_a_one_epoch_job_draws_a_dice_line_on_whole_epochs():
    job = SimpleNamespace(
        epoch_metrics=[{"epoch": 1, "train_loss": 0.4, "val_loss": 0.5, "val_dice": 0.8}],
        progress={"baseline_val_dice": 0.7},
    )
    _loss, dice, order = curves(job)
    line = dice[dice.series == "val Dice"]
    assert list(line.epoch) == ["0", "1"] and list(line.value) == [0.7, 0.8]  # two points: a line
    assert order == ["0", "1"] and all(isinstance(e, str) for e in dice.epoch)  # categories, never 0.5


def _row(vid, active=False, parent=None, before=None, after=None, images=None):
    version = SimpleNamespace(
        id=vid, name=f"v{vid}", family="lite", parent_id=parent, training_job_id=None, created_at=datetime(2025, 1, 1)
    )
    return SimpleNamespace(
        version=version,
        active=active,
        val_dice_before=before,
        val_dice=after,
        evaluated_images=images,
        pending_evaluation=None,
    )


def test_val_dice_before_is_the_active_versions_score_for_a_version_without_a_parent():
    rows = version_table(
        [
            _row(1, active=True, after=0.71, images=2),
            _row(2, after=0.74, images=2),
            _row(3, parent=1, before=0.69, after=0.7),
        ]
    )
    assert [r[6] for r in rows] == ["", 0.71, 0.69]


def test_tabs_follow_the_role():
    names = [title for title, _, _ in TABS]
    shown = {role: [n for n, v in zip(names, tab_visibility(role), strict=True) if v] for role in Role}
    assert shown[Role.annotator] == ["Annotate"]
    assert shown[Role.reviewer] == ["Annotate", "Review", "Train", "Models"]
    assert shown[Role.admin] == names


def test_a_refusal_becomes_the_status_line_and_leaves_the_other_outputs(monkeypatch):
    monkeypatch.setattr(gr, "Warning", lambda message: None)

    @reported(2)
    def refused():
        raise MedsamError("masks/<label>/ is not a folder")

    status, *others = refused()
    assert status == "✗ masks/&lt;label>/ is not a folder"
    assert all(isinstance(o, type(gr.skip())) for o in others) and len(others) == 2
