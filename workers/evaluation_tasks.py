"""Scoring model versions on a project's frozen validation images, on the ``training`` queue.

This is what the promotion gate compares: validation Dice on the same images
for the candidate and the active version. The score comes from the trainer's
own ``validate``, so an evaluated upload and a fine-tune's recorded scores mean
the same thing. The job row is created (and the set frozen) by
``portal.store.services.evaluations``; a redelivered job rescores and replaces.
"""

from __future__ import annotations

from celery import shared_task

from medsam_core.training import TrainConfig, Trainer
from medsam_core.training.data import Sample, prepare
from portal.store.errors import StoreError
from portal.store.models import Job
from portal.store.runtime import build_predictor, load_version
from portal.store.services import evaluations
from portal.store.services.model_versions import active_version
from portal.store.services.training import record_evaluation
from portal.store.store import Store
from workers import names
from workers.jobrunner import Step, run_job
from workers.runtime import get_pool, get_store
from workers.training_tasks import project_samples


@shared_task(bind=True, name=names.TASK_EVALUATE)
def evaluate_version(self, job_id: int) -> dict:
    store = get_store()
    return run_job(store, job_id, self.request.id, _evaluate)


def _evaluate(job: Job, step: Step) -> dict:
    """Score the job's version, and the active one too when it has no score yet (the gate needs both)."""
    store = get_store()
    version_id = job.params["model_version_id"]
    with store.transaction() as db:
        frozen = evaluations.validation_image_ids(db, job.project_id)
        active = active_version(db, job.project_id).id
        todo = [version_id] + [v for v in evaluations.unscored(db, job.project_id, [active]) if v != version_id]
    samples = [s for s in project_samples(store, job.project_id) if int(s.key) in frozen]
    scores = {}
    for done, vid in enumerate(todo):
        step.progress(done=done, total=len(todo), model_version_id=vid)
        scores[vid] = _score(store, vid, job.project_id, samples)
    step.progress(done=len(todo), total=len(todo))
    result = {"model_version_id": version_id, **scores[version_id], "images": len(samples)}
    if len(todo) > 1:
        result["active_model_version_id"], result["active_scores"] = active, scores[active]
    return result


def _score(store: Store, version_id: int, project_id: int, samples: list[Sample]) -> dict:
    version, model = load_version(store, version_id)
    prepared = [p for p in (prepare(s, model.family.preprocessor) for s in samples) if p.targets]
    if not prepared:
        raise StoreError(f"none of the project's {len(samples)} validation images has a labelled object")
    predictor = build_predictor(store.settings, model, get_pool().cache)  # embeddings shared with inference
    scores = Trainer(model, TrainConfig(), predictor).validate(prepared)
    with store.transaction() as db:
        record_evaluation(
            db, version.id, project_id, scores["val_dice"], scores["val_nsd"], len(prepared), replace=True
        )
    return {"val_dice": round(scores["val_dice"], 4), "val_nsd": round(scores["val_nsd"], 4)}
