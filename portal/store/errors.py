"""Errors the services raise; the web layer maps them to HTTP codes, the CLI to messages."""

from medsam_core.errors import MedsamError


class StoreError(MedsamError):
    """Base: something a user or operator can act on."""


class NotFoundError(StoreError):
    pass


class PermissionDeniedError(StoreError):
    pass


class ConflictError(StoreError):
    """A save based on a revision that is no longer the latest. Nothing was written."""

    def __init__(self, message: str, *, current_revision: int | None = None, author: str | None = None):
        super().__init__(message)
        self.current_revision = current_revision
        self.author = author


class DuplicateError(StoreError):
    pass
