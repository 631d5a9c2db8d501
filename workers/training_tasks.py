"""Fine-tuning on the ``training`` queue (evaluation is ``workers.evaluation_tasks``).

The job row carries everything: parameters, progress, per-epoch metrics and
the blob of the last epoch's checkpoint (``JobSink``). A redelivered or reaped
task resumes from that checkpoint instead of starting over, and registers its
result once. The loop itself is ``medsam_core.training.finetune``, the same one
``medsam train`` runs.
"""

from __future__ import annotations

from celery import shared_task

from medsam_core.checkpoints import module_digest
from medsam_core.training import Sample, TrainConfig, check_mode, finetune, split_by_group
from medsam_core.training.artifacts import best_checkpoint, checkpoint_bytes
from portal.store.errors import StoreError
from portal.store.models import Job
from portal.store.runtime import build_predictor, load_version
from portal.store.services.images import display_pixels
from portal.store.services.model_versions import register_version
from portal.store.services.training import freeze_validation_set, record_evaluation, training_gpu
from portal.store.services.training_rows import row_labels, training_rows
from portal.store.services.volumes import get_volume
from portal.store.services.volumes_read import slice_pixels
from workers import names
from workers.jobrunner import Step, run_job
from workers.runtime import get_pool, get_store
from workers.training_sink import JobSink


def project_samples(store, project_id: int) -> list[Sample]:
    """Approved annotations as samples, 3-D label maps as one sample per marked slice (``training_rows``);
    one image's label classes share its group, and a volume's slices share the volume's."""
    with store.transaction() as db:
        rows = training_rows(db, store.blobs, project_id)
        volumes = {r.image.volume_id: get_volume(db, None, r.image.volume_id) for r in rows if r.z is not None}
    return [
        Sample(
            key=str(row.image.id),
            group=row.image.sha256,
            load_rgb=(
                (lambda r=row: display_pixels(store.blobs, r.image, store.settings))
                if row.z is None
                else (lambda r=row: _slice_rgb(store, volumes[r.image.volume_id], r.image))
            ),
            load_labels=lambda r=row: row_labels(store.blobs, r),
        )
        for row in rows
    ]


def _slice_rgb(store, volume, image):
    """A slice's pixels through the decoded-volume LRU (``display_pixels`` would re-read a NIfTI per slice);
    the same pixels, so the same embedding cache entry."""
    with store.transaction() as db:
        return slice_pixels(db, store.blobs, store.settings, volume, image)


def _split(store, job: Job, samples: list[Sample]):
    if job.project_id is None:
        raise StoreError(f"job {job.id} has no project")
    _, val = split_by_group(samples, job.params["val_fraction"], job.params["seed"])
    with store.transaction() as db:  # a set frozen earlier (by any job or evaluation) wins
        frozen = freeze_validation_set(db, job.project_id, sorted({int(s.key) for s in val}))
    train, val = split_by_group(samples, 0, fixed_val_keys={str(i) for i in frozen})
    if len(train) < store.settings.min_training_images:
        raise StoreError(
            f"only {len(train)} approved images are outside the frozen validation set; fine-tuning "
            f"needs at least {store.settings.min_training_images}"
        )
    return train, val


@shared_task(bind=True, name=names.TASK_FINETUNE)
def finetune_job(self, job_id: int) -> dict:
    store = get_store()
    return run_job(store, job_id, self.request.id, _finetune)


def _finetune(job: Job, step: Step) -> dict:
    """Train, register the best epoch if it beat the start, and drop the resume checkpoint if it did not.

    Any exception here ends the job for good (failed or cancelled; a finished
    job is never claimed again), so its checkpoint goes too. A worker that dies
    raises nothing here, and its checkpoint stays for the redelivery.
    """
    store = get_store()
    sink = JobSink(store, job, step)
    try:
        result = _train_and_register(store, job, sink)
    except Exception:
        sink.discard()
        raise
    if result.get("model_version_id") is None:
        sink.discard()
    return result


def _train_and_register(store, job: Job, sink: JobSink) -> dict:
    params = job.params
    check_mode(
        params["mode"],
        training_gpu(store.settings),
        store.settings.allow_full_finetune_without_gpu,
        remedy=" and this worker has none",
        error=StoreError,
    )
    parent, model = load_version(store, params["parent_version_id"])
    train, val = _split(store, job, project_samples(store, job.project_id))
    # Decoder mode encodes through the shared cache with the model being trained (its encoder is frozen and
    # kept in eval mode); full mode computes its embeddings inside the loop and needs no predictor.
    predictor = build_predictor(store.settings, model, get_pool().cache) if params["mode"] == "decoder" else None
    config = TrainConfig(
        mode=params["mode"],
        epochs=params["epochs"],
        batch_size=params["batch_size"],
        lr=params["lr"],
        bbox_shift=params["bbox_shift"],
        seed=params["seed"],
        early_stopping=params.get("early_stopping"),
        click_rounds=params.get("click_rounds", 0),  # jobs queued before clicks existed trained on boxes only
    )
    result = finetune(model, train, val, config, sink, predictor=predictor)
    with store.transaction() as db:
        record_evaluation(db, parent.id, job.project_id, result.baseline_val_dice, None, len(val))
    summary = result.summary()
    if result.best_epoch == 0:
        return {
            **summary,
            "model_version_id": None,
            "note": "no epoch beat the starting weights on validation; no version was registered",
        }
    model.module.load_state_dict(result.best_state)
    best = result.history[result.best_epoch - 1]
    blob = store.blobs.put_bytes(
        checkpoint_bytes(best_checkpoint(result.best_state, model.family.name, result.best_epoch, result.best_val_dice))
    )
    with store.transaction() as db:  # the version and its score together
        version = register_version(
            db,
            store.blobs,
            name=f"job {job.id} ({config.mode}, epoch {result.best_epoch})",
            family=model.family.name,
            encoder_digest=module_digest(model.module.image_encoder),
            model_digest=module_digest(model.module),
            project_id=job.project_id,
            parent_id=parent.id,
            training_job_id=job.id,
            checkpoint_blob=blob,
            metrics={**summary, "val_nsd": best["val_nsd"], "mode": config.mode, "epochs": len(result.history)},
        )
        record_evaluation(db, version.id, job.project_id, result.best_val_dice, best["val_nsd"], len(val))
    return {**summary, "model_version_id": version.id}
