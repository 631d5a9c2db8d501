"""The data model: SQLAlchemy 2.x typed declarative classes.

Rules that protect people's work are in the schema itself, not only in code:
annotation revisions are append-only and unique per (annotation, number), so
two saves from the same base revision cannot both land; images are unique per
(project, file digest, slice); deleting an image cascades to everything made
from it, while audit events keep no foreign key and so outlive what they
describe.
"""

from __future__ import annotations

import enum
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    CheckConstraint,
    ColumnElement,
    DateTime,
    Enum,
    ForeignKey,
    Index,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

SHA = String(64)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(column_0_label)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON, datetime: DateTime(timezone=True)}


def _enum(cls: type[enum.Enum], length: int = 16) -> Enum:
    # Stored as plain strings with a CHECK, so adding a state is a small migration on both databases.
    return Enum(
        cls, native_enum=False, validate_strings=True, length=length, values_callable=lambda e: [m.value for m in e]
    )


class Role(str, enum.Enum):
    annotator = "annotator"
    reviewer = "reviewer"
    admin = "admin"


class AnnotationStatus(str, enum.Enum):
    draft = "draft"
    submitted = "submitted"
    approved = "approved"
    rejected = "rejected"


class JobState(str, enum.Enum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[Role] = mapped_column(_enum(Role), default=Role.annotator)
    is_active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiToken(Base):
    """Only the SHA-256 of a token is kept: a high-entropy secret needs no slow hash."""

    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_sha256: Mapped[str] = mapped_column(SHA, unique=True)
    name: Mapped[str] = mapped_column(String(64), default="api")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]
    revoked: Mapped[bool] = mapped_column(default=False)
    user: Mapped[User] = relationship()


class Project(Base):
    __tablename__ = "projects"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    modality: Mapped[str] = mapped_column(String(32), default="other")
    label_classes: Mapped[list[Any]] = mapped_column(default=list)  # [{"name": ..., "color": "#rrggbb"}]
    active_model_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("model_versions.id", use_alter=True, ondelete="SET NULL")
    )
    # Image ids frozen by the first training job, so every version is compared on the same images.
    validation_image_ids: Mapped[list[Any] | None]
    # Off by default: a DICOM file's name often carries the patient's name or MRN.
    keep_original_names: Mapped[bool] = mapped_column(default=False, server_default=false())
    # On only for single-person projects, where nobody else could review.
    allow_self_review: Mapped[bool] = mapped_column(default=False, server_default=false())
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    members: Mapped[list[ProjectMember]] = relationship(cascade="all, delete-orphan", passive_deletes=True)


class ProjectMember(Base):
    __tablename__ = "project_members"
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    added_at: Mapped[datetime] = mapped_column(default=utcnow)


class Volume(Base):
    """A CT or MR volume as one entity with its geometry; its slices are ``Image`` rows (``volume_id``).

    The stored copy: a NIfTI file is one blob (``blob_sha``, which every slice
    row also points at, as per-slice rows always did); a DICOM series keeps one
    de-identified file per slice, each the ``blob_sha`` of its slice row, so the
    2-D tools read a slice as the single DICOM it is, identical files dedupe in
    the blob store, and DICOM-SEG export gets the exact de-identified datasets
    back. ``sha256`` is of the stored file, or for a series of its slices'
    digests in Z order: the dedup key. Geometry columns are NULL only for rows
    migrated from per-slice images (the migration reads no blobs); the services
    fill them from the file on first use.
    """

    __tablename__ = "volumes"
    __table_args__ = (UniqueConstraint("project_id", "sha256"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    filename: Mapped[str] = mapped_column(String(255))
    sha256: Mapped[str] = mapped_column(SHA)
    blob_sha: Mapped[str | None] = mapped_column(SHA, index=True)  # NIfTI: the file; DICOM: None (per slice)
    source_format: Mapped[str] = mapped_column(String(16))  # "nifti" | "dicom"
    modality: Mapped[str] = mapped_column(String(32), default="other")
    window: Mapped[str | None] = mapped_column(String(16))
    depth: Mapped[int]  # shape (Z, H, W)
    height: Mapped[int]
    width: Mapped[int]
    affine: Mapped[list[Any] | None]  # 4x4, voxel (column, row, z) -> RAS+ mm
    spacing: Mapped[list[Any] | None]  # (column mm, row mm, slice mm)
    orientation: Mapped[str | None] = mapped_column(String(8))  # axis codes, e.g. "LPS"
    slice_positions: Mapped[list[Any] | None]  # DICOM: position along the normal per slice, Z order
    sop_instance_uids: Mapped[list[Any] | None]  # DICOM: the de-identified SOP instance UIDs, Z order
    series_instance_uid: Mapped[str | None] = mapped_column(String(64))
    uploaded_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Image(Base):
    __tablename__ = "images"
    __table_args__ = (UniqueConstraint("project_id", "sha256", "slice_index"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    filename: Mapped[str] = mapped_column(String(255))
    sha256: Mapped[str] = mapped_column(SHA)  # of the stored file (de-identified for DICOM): dedup key
    blob_sha: Mapped[str] = mapped_column(SHA, index=True)  # the stored copy (de-identified for DICOM)
    width: Mapped[int]
    height: Mapped[int]
    modality: Mapped[str] = mapped_column(String(32), default="other")
    window: Mapped[str | None] = mapped_column(String(16))
    slice_index: Mapped[int] = mapped_column(default=0)  # 0 for 2-D images
    num_slices: Mapped[int] = mapped_column(default=1)  # > 1 when this row is one slice of a volume
    # The volume this row is a slice of (its sha256 and slice_index are the volume's and z then).
    volume_id: Mapped[int | None] = mapped_column(ForeignKey("volumes.id", ondelete="CASCADE"), index=True)
    uploaded_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ModelVersion(Base):
    __tablename__ = "model_versions"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    family: Mapped[str] = mapped_column(String(32))
    project_id: Mapped[int | None] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id", ondelete="SET NULL"))
    training_job_id: Mapped[int | None] = mapped_column(  # the fine-tune (a ``Job``) that made it
        ForeignKey("jobs.id", use_alter=True, ondelete="SET NULL")
    )
    checkpoint_blob: Mapped[str | None] = mapped_column(SHA)  # None: the bundled weights
    encoder_digest: Mapped[str] = mapped_column(SHA)
    model_digest: Mapped[str] = mapped_column(SHA, index=True)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ModelActivation(Base):
    """Every change of a project's active version, so rollback knows what came before."""

    __tablename__ = "model_activations"
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id", ondelete="CASCADE"))
    activated_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    activated_at: Mapped[datetime] = mapped_column(default=utcnow)


class Mask(Base):
    """A model output, exactly as proposed, with the prompt and version that made it."""

    __tablename__ = "masks"
    # A batch job stores each item's mask once, however often the task is redelivered.
    __table_args__ = (UniqueConstraint("job_id", "item_index"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id", ondelete="SET NULL"))
    prompt: Mapped[dict[str, Any]] = mapped_column(default=dict)  # {"boxes": [[x0,y0,x1,y1]], "points": [[x,y,l]]}
    predicted_iou: Mapped[float | None]
    blob_sha: Mapped[str] = mapped_column(SHA, index=True)
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    item_index: Mapped[int | None]


class Annotation(Base):
    """One label of one image (a 2-D mask), or of one volume (a 3-D label map): exactly one of the two."""

    __tablename__ = "annotations"
    __table_args__ = (
        UniqueConstraint("image_id", "label"),
        # An index rather than a constraint: SQLite can add one without rebuilding the table (see 0006).
        Index("ix_annotations_volume_id_label", "volume_id", "label", unique=True),
        CheckConstraint("(image_id IS NULL) <> (volume_id IS NULL)", name="one_target"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int | None] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    volume_id: Mapped[int | None] = mapped_column(ForeignKey("volumes.id", ondelete="CASCADE"))
    label: Mapped[str] = mapped_column(String(64))
    status: Mapped[AnnotationStatus] = mapped_column(_enum(AnnotationStatus), default=AnnotationStatus.draft)
    current_revision: Mapped[int] = mapped_column(default=0)  # 0: nothing saved yet
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class AnnotationRevision(Base):
    """Append-only: a revision is never updated or deleted except with its image."""

    __tablename__ = "annotation_revisions"
    __table_args__ = (UniqueConstraint("annotation_id", "number"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    annotation_id: Mapped[int] = mapped_column(ForeignKey("annotations.id", ondelete="CASCADE"), index=True)
    number: Mapped[int]
    author_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    blob_sha: Mapped[str] = mapped_column(SHA, index=True)
    base_mask_id: Mapped[int | None] = mapped_column(ForeignKey("masks.id", ondelete="SET NULL"))
    model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id", ondelete="SET NULL"))
    prompt: Mapped[dict[str, Any] | None]
    comment: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Review(Base):
    __tablename__ = "reviews"
    id: Mapped[int] = mapped_column(primary_key=True)
    annotation_id: Mapped[int] = mapped_column(ForeignKey("annotations.id", ondelete="CASCADE"), index=True)
    revision_number: Mapped[int]
    reviewer_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    decision: Mapped[AnnotationStatus] = mapped_column(_enum(AnnotationStatus))
    comment: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class JobKind(str, enum.Enum):
    encode_image = "encode_image"
    segment_batch = "segment_batch"
    precompute_embeddings = "precompute"
    evaluate = "evaluate"  # a model version on the project's frozen validation images (training queue)
    finetune = "finetune"  # train a new version from the project's approved labels (training queue)
    precompute_volume = "precompute_volume"  # encode every slice of one volume (inference queue)
    propagate = "propagate"  # one box on a key slice through a volume's slices (inference queue)


class Job(Base):
    """Every queued unit of work, of any ``kind``. The row, not the broker, is the source of truth.

    A broker can lose a message fetched by a worker that then dies, so a
    running job proves it is alive through ``heartbeat_at``, and a reaper
    requeues jobs whose heartbeat went stale.

    One table for every kind, so the state machine, the reaper, the queue
    metrics and the API read one place by job id. A fine-tune's own three
    columns (``epoch_metrics``, ``checkpoint_blob``, ``curves_blob``) are
    nullable columns here rather than a 1:1 detail table: they are small, only
    fine-tunes write them (NULL for every other kind), and a detail table would
    cost a join on every read and a second row to keep in step on every write.
    """

    __tablename__ = "jobs"
    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[JobKind] = mapped_column(_enum(JobKind, 24))
    project_id: Mapped[int | None] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    requested_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    state: Mapped[JobState] = mapped_column(_enum(JobState), default=JobState.queued, index=True)
    progress: Mapped[dict[str, Any]] = mapped_column(default=dict)
    result: Mapped[dict[str, Any]] = mapped_column(default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    celery_task_id: Mapped[str | None] = mapped_column(String(64))
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    attempts: Mapped[int] = mapped_column(default=0)
    heartbeat_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    # Fine-tunes only; NULL for every other kind.
    epoch_metrics: Mapped[list[Any] | None]
    checkpoint_blob: Mapped[str | None] = mapped_column(SHA)  # last epoch's training checkpoint, for resume
    curves_blob: Mapped[str | None] = mapped_column(SHA)  # loss and validation-Dice PNG


class ModelEvaluation(Base):
    """A version's score on a project's frozen validation images: what the promotion gate compares."""

    __tablename__ = "model_evaluations"
    __table_args__ = (UniqueConstraint("model_version_id", "project_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id", ondelete="CASCADE"))
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    val_dice: Mapped[float]
    val_nsd: Mapped[float | None]
    images: Mapped[int]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class EmbeddingEntry(Base):
    """Index of the embedding cache; the bytes are a content-addressed blob."""

    __tablename__ = "embeddings"
    __table_args__ = (UniqueConstraint("pixel_sha256", "family", "encoder_digest"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    pixel_sha256: Mapped[str] = mapped_column(SHA)
    family: Mapped[str] = mapped_column(String(32))
    encoder_digest: Mapped[str] = mapped_column(SHA)
    blob_sha: Mapped[str] = mapped_column(SHA, index=True)
    size_bytes: Mapped[int]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class LoginThrottle(Base):
    """Failed logins per key ("user:NAME" or "addr:IP"), shared by every web process through the database."""

    __tablename__ = "login_throttle"
    key: Mapped[str] = mapped_column(String(160), primary_key=True)
    failures: Mapped[int] = mapped_column(default=0)
    last_failure_at: Mapped[datetime | None]
    locked_until: Mapped[datetime | None]


class AuditEvent(Base):
    """Append-only. No foreign keys: the record of a deletion must outlive what was deleted."""

    __tablename__ = "audit_events"
    __table_args__ = (Index("ix_audit_events_target", "target_type", "target_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    actor_id: Mapped[int | None]
    actor_name: Mapped[str | None] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(32), index=True)
    target_type: Mapped[str] = mapped_column(String(32))
    target_id: Mapped[int | None]
    project_id: Mapped[int | None] = mapped_column(index=True)
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)


def at_current_revision() -> ColumnElement[bool]:
    """Join condition of an annotation and its current revision: what reviews, exports and training read."""
    return (AnnotationRevision.annotation_id == Annotation.id) & (
        AnnotationRevision.number == Annotation.current_revision
    )
