"""Celery workers. ``celery -A workers worker`` finds ``app`` here, as Celery users expect."""

from workers.app import app

__all__ = ["app"]
