"""Migration 0005 folds training_jobs into jobs and keeps every row, field and reference, both ways."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
import sqlalchemy as sa
from alembic import command

from portal.store.db import make_engine
from portal.store.migrate import alembic_config, current_revision, head_revision, upgrade
from tests.dbutil import temporary_database

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
COMMON = (
    "project_id",
    "requested_by",
    "params",
    "state",
    "progress",
    "result",
    "error",
    "celery_task_id",
    "cancel_requested",
    "attempts",
    "heartbeat_at",
    "created_at",
    "started_at",
    "finished_at",
)
JSONS = {"params", "progress", "result", "epoch_metrics", "details", "label_classes", "metrics"}


def table(name, *columns):
    return sa.table(
        name,
        *(
            sa.column(c, sa.JSON if c in JSONS else sa.DateTime(timezone=True) if c.endswith("_at") else None)
            for c in columns
        ),
    )


PROJECTS = table(
    "projects", "id", "name", "modality", "label_classes", "created_at", "keep_original_names", "allow_self_review"
)
USERS = table("users", "id", "username", "password_hash", "role", "is_active", "created_at")
JOBS = table("jobs", "id", "kind", *COMMON)
TRAINING = table("training_jobs", "id", *COMMON, "epoch_metrics", "checkpoint_blob", "curves_blob")
VERSIONS = table(
    "model_versions",
    "id",
    "name",
    "family",
    "project_id",
    "training_job_id",
    "encoder_digest",
    "model_digest",
    "metrics",
    "created_at",
)
AUDIT = table("audit_events", "id", "at", "action", "target_type", "target_id", "project_id", "details")


def job(i, state, **extra):
    return dict(
        id=i,
        project_id=1,
        requested_by=1,
        params={"n": i},
        state=state,
        progress={"done": i},
        result={"r": i},
        error=f"e{i}" if state == "failed" else None,
        celery_task_id=f"task-{i}",
        cancel_requested=state == "cancelled",
        attempts=i,
        heartbeat_at=NOW,
        created_at=NOW,
        started_at=NOW,
        finished_at=None,
        **extra,
    )


INFERENCE = [
    job(1, "succeeded", kind="encode_image"),
    job(2, "running", kind="segment_batch"),
    job(3, "queued", kind="precompute"),
    job(4, "failed", kind="evaluate"),
]
FINETUNES = [
    job(1, "succeeded", epoch_metrics=[{"epoch": 1, "val_dice": 0.8}], checkpoint_blob="a" * 64, curves_blob="b" * 64),
    job(2, "cancelled", epoch_metrics=[], checkpoint_blob=None, curves_blob=None),
    job(7, "failed", epoch_metrics=[{"epoch": 1}, {"epoch": 2}], checkpoint_blob="c" * 64, curves_blob=None),
]


def seed(conn) -> None:
    conn.execute(
        sa.insert(USERS).values(id=1, username="u", password_hash="x", role="admin", is_active=True, created_at=NOW)
    )
    conn.execute(
        sa.insert(PROJECTS).values(
            id=1,
            name="p",
            modality="ct",
            label_classes=[],
            created_at=NOW,
            keep_original_names=False,
            allow_self_review=False,
        )
    )
    conn.execute(sa.insert(JOBS), INFERENCE)
    conn.execute(sa.insert(TRAINING), FINETUNES)
    conn.execute(
        sa.insert(VERSIONS),
        [
            dict(
                id=10,
                name="base",
                family="lite",
                project_id=None,
                training_job_id=None,
                encoder_digest="e" * 64,
                model_digest="m" * 64,
                metrics={},
                created_at=NOW,
            ),
            dict(
                id=11,
                name="tuned",
                family="lite",
                project_id=1,
                training_job_id=1,
                encoder_digest="e" * 64,
                model_digest="n" * 64,
                metrics={"val_dice": 0.8},
                created_at=NOW,
            ),
            dict(
                id=12,
                name="tuned again",
                family="lite",
                project_id=1,
                training_job_id=7,
                encoder_digest="e" * 64,
                model_digest="o" * 64,
                metrics={},
                created_at=NOW,
            ),
        ],
    )
    conn.execute(
        sa.insert(AUDIT),
        [
            dict(id=1, at=NOW, action="job.queued", target_type="training_jobs", target_id=7, project_id=1, details={}),
            dict(id=2, at=NOW, action="job.running", target_type="jobs", target_id=1, project_id=1, details={}),
            dict(
                id=3,
                at=NOW,
                action="model.register",
                target_type="model_version",
                target_id=12,
                project_id=1,
                details={"training_job_id": 7, "family": "lite"},
            ),
        ],
    )


def plain(value):
    """SQLite hands back naive UTC datetimes, PostgreSQL aware ones: compare them as naive UTC."""
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value.astimezone(timezone.utc).replace(tzinfo=None)
    return value


def same(row):
    return {k: plain(v) for k, v in row.items()}


def rows(conn, t):
    return {r["id"]: same(r) for r in conn.execute(sa.select(t)).mappings()}


def without_id(row):
    return {k: v for k, v in row.items() if k != "id"}


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request, tmp_path):
    with temporary_database(request.param, tmp_path) as url:
        eng = make_engine(url)
        yield eng
        eng.dispose()


def test_training_jobs_become_finetune_jobs_with_every_field_and_reference(engine):
    upgrade(engine, "0004")
    with engine.begin() as conn:
        seed(conn)
    upgrade(engine)
    assert current_revision(engine) == head_revision()
    assert "training_jobs" not in sa.inspect(engine).get_table_names()
    jobs_after = table("jobs", "id", "kind", *COMMON, "epoch_metrics", "checkpoint_blob", "curves_blob")
    with engine.connect() as conn:
        got = rows(conn, jobs_after)
        versions = rows(conn, VERSIONS)
        audit = rows(conn, AUDIT)
    for old in INFERENCE:  # kept under their ids, with nothing of a fine-tune's
        assert got[old["id"]] == same({**old, "epoch_metrics": None, "checkpoint_blob": None, "curves_blob": None})
    finetunes = {i: r for i, r in got.items() if r["kind"] == "finetune"}
    assert len(got) == len(INFERENCE) + len(FINETUNES) and len(finetunes) == len(FINETUNES)
    new_id = {}
    for old in FINETUNES:  # new ids, in the old order, after the inference jobs
        (match,) = [i for i, r in finetunes.items() if r["celery_task_id"] == old["celery_task_id"]]
        assert finetunes[match] == same({**old, "id": match, "kind": "finetune"})
        new_id[old["id"]] = match
    assert sorted(new_id.values()) == [new_id[1], new_id[2], new_id[7]] and min(new_id.values()) > 4
    assert (versions[10]["training_job_id"], versions[11]["training_job_id"], versions[12]["training_job_id"]) == (
        None,
        new_id[1],
        new_id[7],
    )
    assert (audit[1]["target_type"], audit[1]["target_id"]) == ("jobs", new_id[7])
    assert (audit[2]["target_type"], audit[2]["target_id"]) == ("jobs", 1)  # an inference job: untouched
    assert audit[3]["details"] == {"training_job_id": new_id[7], "family": "lite"}
    _new_rows_still_work(engine, new_id)
    _downgrade_restores(engine, new_id)


def _new_rows_still_work(engine, new_id):
    """The foreign key points at jobs now: deleting a fine-tune unsets its version's reference, nothing more."""
    with engine.begin() as conn:
        fresh = conn.execute(
            sa.insert(JOBS).values(without_id(job(0, "queued", kind="finetune"))).returning(JOBS.c.id)
        ).scalar()
        assert fresh > max(new_id.values())
        conn.execute(sa.update(VERSIONS).where(VERSIONS.c.id == 10).values(training_job_id=fresh))
        conn.execute(sa.delete(JOBS).where(JOBS.c.id == fresh))
        assert conn.execute(sa.select(VERSIONS.c.training_job_id).where(VERSIONS.c.id == 10)).scalar() is None
        with pytest.raises(sa.exc.IntegrityError), conn.begin_nested():
            conn.execute(sa.update(VERSIONS).where(VERSIONS.c.id == 10).values(training_job_id=999999))


def _downgrade_restores(engine, new_id):
    cfg = alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0004")
    with engine.connect() as conn:
        training = rows(conn, TRAINING)
        inference = rows(conn, JOBS)
        versions = rows(conn, VERSIONS)
    assert inference == {r["id"]: same(r) for r in INFERENCE}
    assert training == {new_id[old["id"]]: same({**old, "id": new_id[old["id"]]}) for old in FINETUNES}
    assert (versions[11]["training_job_id"], versions[12]["training_job_id"]) == (new_id[1], new_id[7])
    with engine.begin() as conn:  # the sequence is past the moved ids, and the key points at training_jobs
        fresh = conn.execute(sa.insert(TRAINING).values(without_id(FINETUNES[1])).returning(TRAINING.c.id))
        assert fresh.scalar() > max(new_id.values())
        conn.execute(sa.update(VERSIONS).where(VERSIONS.c.id == 10).values(training_job_id=new_id[2]))
    upgrade(engine)
    assert current_revision(engine) == head_revision()
