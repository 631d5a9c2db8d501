"""Queue and task names, spelled once.

The web process sends tasks by name and never imports their code, so the
name is the whole contract between the two sides: the task definitions, the
Celery routes and the queue port all read it from here. Plain strings only,
so importing this module costs nothing and reads no settings.
"""

from __future__ import annotations

INFERENCE_QUEUE = "inference"
TRAINING_QUEUE = "training"
QUEUES = (INFERENCE_QUEUE, TRAINING_QUEUE)

# A task's queue is the middle part of its name (see ``workers.app``'s routes).
INFERENCE_TASKS = "medsam.inference.*"
TRAINING_TASKS = "medsam.training.*"

TASK_NOOP = "medsam.inference.noop"
TASK_ENCODE = "medsam.inference.encode_image"
TASK_SEGMENT_BATCH = "medsam.inference.segment_batch"
TASK_PRECOMPUTE = "medsam.inference.precompute_embeddings"
TASK_PRECOMPUTE_VOLUME = "medsam.inference.precompute_volume"
TASK_PROPAGATE = "medsam.inference.propagate"
TASK_FINETUNE = "medsam.training.finetune"
TASK_EVALUATE = "medsam.training.evaluate"

# The modules a worker imports to register its tasks.
TASK_MODULES = ("workers.tasks", "workers.volume_tasks", "workers.training_tasks", "workers.evaluation_tasks")
