"""What every portal tab is built from: the app's state, the demo engine and the shared project dropdown.

The tabs reach the store, the segmentation service and the job queue only
through this, the objects the FastAPI app factory put on ``app.state``, so the
UI and the REST API share one of each and the UI never imports the workers.

The tab modules leave out ``from __future__ import annotations``: Gradio finds
a handler's ``request: gr.Request`` parameter by resolving its type hints, and
quietly passes nothing when a string hint fails to resolve.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import gradio as gr

from portal.store.blobs import BlobStore
from portal.store.models import User
from portal.store.settings import Settings
from portal.store.store import Store
from portal.web.ui.common import user_of

T = TypeVar("T")


@dataclass(frozen=True)
class PortalContext:
    state: Any  # FastAPI's app.state: store, settings, segmentation, queue
    engine: Any  # the public demo's DemoEngine
    project: gr.Dropdown  # the project every tab works on

    @property
    def store(self) -> Store:
        return self.state.store

    @property
    def settings(self) -> Settings:
        return self.state.settings

    @property
    def segmentation(self) -> Any:  # portal.web.segmentation.SegmentationService
        return self.state.segmentation

    @property
    def queue(self) -> Any:  # workers.queue.JobQueue
        """Read at each use: the app factory may set it after the Blocks are built."""
        return self.state.queue

    def user(self, request: gr.Request) -> User:
        return user_of(self.store, request)

    @property
    def blobs(self) -> BlobStore:
        return self.store.blobs

    def read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a ``worklists``-style read ``fn(session, *args)`` in a transaction of its own."""
        with self.store.transaction() as session:
            return fn(session, *args)

    def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a service ``fn(session, *args, **kwargs)`` in a transaction of its own, committed on return.

        One transaction per UI event, as the API has one per request: a handler
        that fails half-way writes nothing.
        """
        with self.store.transaction() as session:
            return fn(session, *args, **kwargs)
