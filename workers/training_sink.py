"""Where a queued fine-tune keeps what must outlive its worker: blobs and its job row.

Every epoch's checkpoint goes to the blob store first and then the row names it,
so a row never points at a missing blob; a redelivered or reaped task finds
that checkpoint on the row and resumes from it instead of starting over. Each
step's progress doubles as the heartbeat, and raises ``JobCancelled`` when
someone cancelled, which ends the run within one step.

Only the latest epoch's checkpoint is kept: each new one replaces the one
before (a resume needs the latest alone), and ``discard`` drops the last one
when the run ends without a version, so a fine-tune that registers nothing
leaves no checkpoints behind (each is the size of the model and more).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update

from medsam_core.training import RunInfo, TrainResult
from medsam_core.training.artifacts import checkpoint_bytes, checkpoint_from_bytes, curves_png
from portal.store.models import Job
from portal.store.services.gc import referenced_blobs_for
from portal.store.store import Store
from workers.jobrunner import Step


class JobSink:
    info: RunInfo  # set by start()

    def __init__(self, store: Store, job: Job, step: Step):
        self.store, self.job, self.step = store, job, step
        self._checkpoint = job.checkpoint_blob  # the one the row names: a redelivery's resume point

    def start(self, info: RunInfo) -> dict[str, Any] | None:
        self.info = info
        if not self.job.checkpoint_blob:
            return None
        return checkpoint_from_bytes(self.store.blobs.get_bytes(self.job.checkpoint_blob))  # a previous delivery died

    def progress(self, values: dict[str, Any]) -> None:
        self.step.progress(**values)

    def epoch_done(self, record: dict[str, Any], checkpoint: dict[str, Any]) -> None:
        blob = self.store.blobs.put_bytes(checkpoint_bytes(checkpoint))  # blob first, then the row that names it
        self._update(checkpoint_blob=blob, epoch_metrics=checkpoint["history"])
        previous, self._checkpoint = self._checkpoint, blob
        if previous and previous != blob:
            self._drop(previous)  # the row names the new one now: the old one is nobody's resume point
        self.step.progress(
            epoch=record["epoch"],
            epochs=self.info.config.epochs,
            val_dice=record["val_dice"],
            loss=record["train_loss"],
            baseline_val_dice=checkpoint["baseline_val_dice"],
        )

    def finished(self, result: TrainResult) -> None:
        title = f"job {self.job.id}: {self.info.family}, {self.info.config.mode} mode"
        self._update(
            curves_blob=self.store.blobs.put_bytes(curves_png(result.history, result.baseline_val_dice, title))
        )

    def discard(self) -> None:
        """The run is over and registered nothing (or failed, or was cancelled): nothing will resume it."""
        with self.store.transaction() as session:
            blob = session.scalar(select(Job.checkpoint_blob).where(Job.id == self.job.id))
            session.execute(update(Job).where(Job.id == self.job.id).values(checkpoint_blob=None))
        self._checkpoint = None
        if blob:
            self._drop(blob)

    def _drop(self, blob: str) -> None:
        """Delete a checkpoint blob unless some row still names it (content-addressed: another could)."""
        with self.store.transaction() as session:
            if referenced_blobs_for(session, blob):
                return
        self.store.blobs.delete(blob)

    def _update(self, **values: Any) -> None:
        with self.store.transaction() as session:
            session.execute(update(Job).where(Job.id == self.job.id).values(**values))
