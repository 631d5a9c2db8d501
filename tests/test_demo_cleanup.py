"""Public-demo uploads live as long as ``demo_ttl_minutes`` says, not a constant."""

from __future__ import annotations

import os
import time

from portal.store.settings import Settings


def test_the_demo_sweep_keeps_uploads_for_the_configured_minutes(tmp_path, monkeypatch):
    from portal.web.ui import common, segment

    monkeypatch.setattr(common, "UI_TMP", tmp_path / "ui")
    folder = common.new_work_dir(segment.KIND)
    old, young = folder / "old.png", folder / "young.png"
    for path, age_min in ((old, 4), (young, 2)):
        path.write_bytes(b"x")
        stamp = time.time() - age_min * 60
        os.utime(path, (stamp, stamp))

    settings = Settings(data_dir=tmp_path / "data", demo_ttl_minutes=3)
    load = segment._loader(settings.max_image_pixels, common.demo_ttl_s(settings))
    load(None, None, None)  # every upload (or clearing one) sweeps first
    assert not old.exists() and young.exists()

    settings = Settings(data_dir=tmp_path / "data", demo_ttl_minutes=1)
    segment._loader(settings.max_image_pixels, common.demo_ttl_s(settings))(None, None, None)
    assert not young.exists()
