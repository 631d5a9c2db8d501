"""Fine-tuning and evaluation on the ``training`` queue.

The job row carries everything: parameters, progress, per-epoch metrics and
the blob of the last epoch's checkpoint. A redelivered or reaped task resumes
from that checkpoint instead of starting over, and registers its result once.
"""

from __future__ import annotations

from sqlalchemy import update

from medsam_core.checkpoints import module_digest
from medsam_core.models import load_model
from medsam_core.predictor import Predictor
from medsam_core.training import Sample, TrainConfig, Trainer, split_by_group
from medsam_core.training.artifacts import best_checkpoint, checkpoint_bytes, checkpoint_from_bytes, curves_png
from portal.store.errors import NotFoundError, StoreError
from portal.store.models import ModelVersion, Project, TrainingJob
from portal.store.services import jobs as job_service
from portal.store.services.annotations import training_set
from portal.store.services.images import display_pixels
from portal.store.services.masks import load_mask
from portal.store.services.model_versions import register_version
from portal.store.services.training import freeze_validation_set, record_evaluation, training_gpu
from portal.store.settings import get_settings
from workers.app import app
from workers.jobrunner import Step, run_job
from workers.runtime import get_pool, get_store

TRAINING_LIMIT = get_settings().training_time_limit_s


def project_samples(store, project_id: int) -> list[Sample]:
    """Approved annotations as samples; one image's label classes share its group (and its side of the split)."""
    out = []
    for image, label, blob in training_set(store, project_id):
        out.append(Sample(key=str(image.id), group=image.sha256,
                          load_rgb=lambda i=image: display_pixels(store, i),
                          load_labels=lambda b=blob: load_mask(store, b)))
    return out


def _split(store, job: TrainingJob, samples: list[Sample]):
    with store.transaction() as session:
        frozen = session.get(Project, job.project_id).validation_image_ids
    if frozen is None:
        _, val = split_by_group(samples, job.params["val_fraction"], job.params["seed"])
        frozen = freeze_validation_set(store, job.project_id, sorted({int(s.key) for s in val}))
    train, val = split_by_group(samples, 0, fixed_val_keys={str(i) for i in frozen})
    if len(train) < store.settings.min_training_images:
        raise StoreError(f"only {len(train)} approved images are outside the frozen validation set; fine-tuning "
                         f"needs at least {store.settings.min_training_images}")
    return train, val


def _load(store, version_id: int):
    with store.transaction() as session:
        version = session.get(ModelVersion, version_id)
        if version is None:
            raise NotFoundError(f"model version {version_id} does not exist")
    checkpoint = None if version.checkpoint_blob is None else get_pool().checkpoint_file(version.checkpoint_blob)
    return version, load_model(version.family, checkpoint, store.settings.device)


@app.task(bind=True, name="medsam.training.finetune", time_limit=TRAINING_LIMIT)
def finetune(self, job_id: int) -> dict:
    store = get_store()
    return run_job(store, TrainingJob, job_id, self.request.id, _finetune)


def _finetune(job: TrainingJob, step: Step) -> dict:
    store = get_store()
    params = job.params
    if params["mode"] == "full" and not training_gpu(store) and not store.settings.allow_full_finetune_without_gpu:
        raise StoreError("full fine-tuning needs a GPU and this worker has none")
    parent, model = _load(store, params["parent_version_id"])
    train, val = _split(store, job, project_samples(store, job.project_id))
    # A separate model for the frozen encoder's embeddings, so training never changes what the cache holds.
    encoder_model = load_model(model.family.name, model.checkpoint, store.settings.device)
    predictor = Predictor(encoder_model, get_pool().cache, backend=store.settings.inference_backend,
                          onnx_dir=store.settings.onnx_dir)
    config = TrainConfig(mode=params["mode"], epochs=params["epochs"], batch_size=params["batch_size"],
                         lr=params["lr"], bbox_shift=params["bbox_shift"], seed=params["seed"],
                         early_stopping=params.get("early_stopping"))
    resume = None
    if job.checkpoint_blob:  # a previous delivery died: carry on from its last epoch
        resume = checkpoint_from_bytes(store.blobs.get_bytes(job.checkpoint_blob))

    def on_epoch(record, checkpoint):
        blob = store.blobs.put_bytes(checkpoint_bytes(checkpoint))  # blob first, then the row that names it
        with store.transaction() as session:
            session.execute(update(TrainingJob).where(TrainingJob.id == job.id).values(
                checkpoint_blob=blob, epoch_metrics=checkpoint["history"]))
        step.progress(epoch=record["epoch"], epochs=config.epochs, val_dice=record["val_dice"],
                      loss=record["train_loss"], baseline_val_dice=checkpoint["baseline_val_dice"])

    result = Trainer(model, config, predictor).fit(train, val, resume=resume, on_step=lambda p: step.progress(**p),
                                                   on_epoch=on_epoch)
    curves = store.blobs.put_bytes(curves_png(result.history, result.baseline_val_dice,
                                              f"job {job.id}: {model.family.name}, {config.mode} mode"))
    with store.transaction() as session:
        session.execute(update(TrainingJob).where(TrainingJob.id == job.id).values(curves_blob=curves))
    record_evaluation(store, parent.id, job.project_id, result.baseline_val_dice, None, len(val))
    summary = {"baseline_val_dice": round(result.baseline_val_dice, 4), "best_val_dice": round(result.best_val_dice, 4),
               "best_epoch": result.best_epoch, "train_images": len(train), "val_images": len(val)}
    if result.best_epoch == 0:
        return {**summary, "model_version_id": None,
                "note": "no epoch beat the starting weights on validation; no version was registered"}
    model.module.load_state_dict(result.best_state)
    best = result.history[result.best_epoch - 1]
    blob = store.blobs.put_bytes(checkpoint_bytes(best_checkpoint(result.best_state, model.family.name,
                                                                  result.best_epoch, result.best_val_dice)))
    version = register_version(
        store, name=f"job {job.id} ({config.mode}, epoch {result.best_epoch})", family=model.family.name,
        encoder_digest=module_digest(model.module.image_encoder), model_digest=module_digest(model.module),
        project_id=job.project_id, parent_id=parent.id, training_job_id=job.id, checkpoint_blob=blob,
        metrics={**summary, "val_nsd": best["val_nsd"], "mode": config.mode, "epochs": len(result.history)})
    record_evaluation(store, version.id, job.project_id, result.best_val_dice, best["val_nsd"], len(val))
    return {**summary, "model_version_id": version.id}


@app.task(bind=True, name="medsam.training.evaluate", time_limit=TRAINING_LIMIT)
def evaluate_version(self, version_id: int, project_id: int) -> dict:
    """Score a version on the project's frozen validation images (what the promotion gate compares)."""
    store = get_store()
    with store.transaction() as session:
        frozen = session.get(Project, project_id).validation_image_ids
    if not frozen:
        raise StoreError(f"project {project_id} has no frozen validation set yet; run a fine-tune first")
    samples = [s for s in project_samples(store, project_id) if int(s.key) in set(frozen)]
    version, model = _load(store, version_id)
    predictor = Predictor(model, get_pool().cache, backend=store.settings.inference_backend,
                          onnx_dir=store.settings.onnx_dir)
    trainer = Trainer(model, TrainConfig(), predictor)
    scores = trainer.validate(trainer._prepare(samples))
    record_evaluation(store, version.id, project_id, scores["val_dice"], scores["val_nsd"], len(samples),
                      replace=True)
    return {"model_version_id": version.id, **scores, "images": len(samples)}
