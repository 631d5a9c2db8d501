"""One transaction per request: a request that fails after a service wrote leaves nothing behind."""

from __future__ import annotations

import uuid

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from portal.store.errors import StoreError
from portal.store.models import AuditEvent, Project, Role
from portal.store.services import projects, users
from portal.web import errors
from portal.web.api import projects as project_routes
from tests.storeutil import make_store, new_user


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    folder = tmp_path_factory.mktemp("request_tx")
    store = make_store(f"sqlite:///{folder / 'portal.db'}", folder)
    app = FastAPI()
    app.state.store, app.state.settings = store, store.settings
    errors.install(app)
    app.include_router(project_routes.router)
    admin = new_user(store, Role.admin)
    with store.transaction() as session:
        token = users.issue_token(session, admin)
    with TestClient(app, headers={"Authorization": f"Bearer {token}"}) as http:
        yield http, store
    store.close()


def saved(store, name: str) -> tuple[bool, int]:
    """Whether the project exists, and how many projects were ever audited as created."""
    with store.transaction() as session:
        exists = session.scalar(select(Project).where(Project.name == name)) is not None
        events = session.scalar(
            select(func.count()).select_from(AuditEvent).where(AuditEvent.action == "project.create")
        )
        return exists, int(events or 0)


def test_a_request_that_succeeds_commits(client):
    http, store = client
    name = f"kept-{uuid.uuid4().hex[:6]}"
    _, events = saved(store, name)
    assert http.post("/api/v1/projects", json={"name": name}).status_code == 201
    assert saved(store, name) == (True, events + 1)


def test_a_service_error_after_a_write_rolls_the_whole_request_back(client, monkeypatch):
    http, store = client
    name = f"lost-{uuid.uuid4().hex[:6]}"
    real = projects.create_project
    _, events = saved(store, name)

    def writes_then_fails(session, *args, **kwargs):
        real(session, *args, **kwargs)  # the row and its audit event are flushed: written, not committed
        assert session.scalar(select(Project).where(Project.name == name)) is not None
        raise StoreError("a later check of the same request refused it")

    monkeypatch.setattr(projects, "create_project", writes_then_fails)
    answer = http.post("/api/v1/projects", json={"name": name})
    assert answer.status_code == 400 and "refused" in answer.json()["detail"]
    assert saved(store, name) == (False, events)  # neither the row nor its audit event was committed


def test_a_failure_after_the_service_returned_rolls_it_back_too(client, monkeypatch):
    """The route's own work (here: building the answer) is inside the request's transaction as well."""
    http, store = client
    name = f"unanswered-{uuid.uuid4().hex[:6]}"
    _, events = saved(store, name)

    def cannot_answer(project):
        raise StoreError("the answer could not be built")

    monkeypatch.setattr(project_routes.ProjectPublic, "of", cannot_answer)
    assert http.post("/api/v1/projects", json={"name": name}).status_code == 400
    assert saved(store, name) == (False, events)
