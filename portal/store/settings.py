"""The one settings object. Every ``MEDSAM_*`` variable (or a line in ``.env``) lands here.

``medsam_core`` never reads it: the CLI, the workers and the portal pass plain
values down, so the engine stays usable from any script.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MEDSAM_", env_file=".env", extra="ignore")

    data_dir: Path = Field(Path("./medsam_data"), description="Database, blobs, caches and exports live here.")
    default_model: str = Field("lite", description="Model family used when none is named.")
    device: str = Field("auto", description="'auto' (GPU if present), 'cpu', 'cuda' or 'cuda:N'.")
    inference_backend: str = Field(
        "auto",
        description="'auto' (ONNX Runtime for lite on CPU), 'torch', 'onnx', or 'openvino' (faster encoder, bf16).",
    )
    max_image_pixels: int = Field(100_000_000, gt=0, description="Largest image, per slice, accepted.")
    embedding_cache_mb: int = Field(5120, gt=0, description="Disk budget of the embedding cache (2 MB each).")
    embedding_memory_items: int = Field(16, ge=0, description="Embeddings kept in memory per process.")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default SQLite in data_dir.")
    storage_url: str | None = Field(None, description="Blob store: a folder, file:///path or s3://bucket/prefix.")
    s3_endpoint_url: str | None = Field(None, description="S3-compatible endpoint, e.g. MinIO's.")
    auto_migrate: bool = Field(True, description="Upgrade a database that is behind when the app starts.")
    keep_dicom_identifiers: bool = Field(False, description="Store DICOM uploads with patient tags intact.")
    gc_grace_hours: float = Field(1.0, ge=0, description="Unreferenced blobs younger than this are kept.")
    broker_url: str | None = Field(None, description="Celery broker; default a SQLite file (no server needed).")
    result_backend: str | None = Field(None, description="Celery result backend; default a SQLite file.")
    host: str = Field("127.0.0.1", description="Address the web server listens on.")
    port: int = Field(7860, ge=1, le=65535, description="Port the web server listens on.")
    model_pool_size: int = Field(2, ge=1, description="Model versions a worker keeps loaded.")
    job_heartbeat_s: float = Field(10.0, gt=0, description="How often a running job proves it is alive.")
    job_stale_s: float = Field(60.0, gt=0, description="A running job silent this long is requeued.")
    reaper_interval_s: float = Field(30.0, gt=0, description="How often a worker looks for stale jobs.")
    inference_time_limit_s: int = Field(3600, gt=0, description="Hard time limit of one inference task.")
    min_training_images: int = Field(4, ge=1, description="Fewest labelled images a fine-tune accepts.")
    training_gpu: bool | None = Field(None, description="Do training workers have a GPU? None: look here.")
    allow_full_finetune_without_gpu: bool = Field(False, description="Permit full fine-tuning on a CPU.")
    training_time_limit_s: int = Field(7 * 24 * 3600, gt=0, description="Hard time limit of one training task.")
    max_checkpoint_mb: int = Field(4096, gt=0, description="Largest checkpoint upload (SAM ViT-H is 2.5 GB).")
    max_upload_mb: int = Field(200, gt=0, description="Largest upload accepted by the portal, in MB.")
    max_boxes_per_prompt: int = Field(32, ge=1, le=1024, description="Most boxes one prompt may carry.")
    max_points_per_prompt: int = Field(64, ge=1, le=4096, description="Most points one prompt may carry.")
    max_json_kb: int = Field(1024, ge=1, description="Largest JSON request body, in KiB (uploads are separate).")
    decode_chunk_boxes: int = Field(8, ge=1, description="Boxes decoded together; bounds a prompt's peak memory.")
    login_max_failures: int = Field(5, ge=1, description="Failed logins per account or address before a lock.")
    login_address_max_failures: int = Field(20, ge=1, description="Failed logins from one address before a lock.")
    forwarded_allow_ips: str = Field(
        "127.0.0.1",
        description="Proxies whose X-Forwarded-For is believed "
        "(uvicorn's forwarded_allow_ips); set your reverse proxy's address.",
    )
    login_lock_s: float = Field(60.0, ge=0, description="First lock after too many failures; doubles each time.")
    login_lock_max_s: float = Field(900.0, ge=0, description="Longest lock after repeated failures.")
    metrics_public: bool = Field(False, description="Serve /metrics without a token (the embedded demo only).")
    metrics_token: str | None = Field(None, description="Bearer token a Prometheus scraper sends for /metrics.")
    public_demo: bool = Field(True, description="Offer the segmentation demo without login.")
    demo_ttl_minutes: int = Field(60, gt=0, description="Public demo uploads are deleted after this long.")

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'medsam.db').resolve()}"

    @property
    def resolved_storage_url(self) -> str:
        return self.storage_url or str((self.data_dir / "blobs").resolve())

    @property
    def resolved_broker_url(self) -> str:
        return self.broker_url or f"sqla+sqlite:///{(self.data_dir / 'broker.sqlite').resolve()}"

    @property
    def resolved_result_backend(self) -> str:
        return self.result_backend or f"db+sqlite:///{(self.data_dir / 'results.sqlite').resolve()}"

    @property
    def embedding_dir(self) -> Path:
        return self.data_dir / "embeddings"

    @property
    def onnx_dir(self) -> Path:
        return self.data_dir / "onnx"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
