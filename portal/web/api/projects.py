"""Projects and membership. Members see their projects; admins see all and manage them."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from portal.store.models import Project, User
from portal.store.services import projects
from portal.web.api import PREFIX, store_of
from portal.web.auth import current_user

router = APIRouter(prefix=PREFIX, tags=["projects"])


class ProjectIn(BaseModel):
    name: str
    modality: str = "other"
    labels: list[str | dict[str, Any]] = Field(default_factory=lambda: ["lesion"],
                                              description='label class names, or {"name", "color": "#rrggbb"}')
    keep_original_names: bool = Field(False, description="keep DICOM upload names (they often name the patient)")
    allow_self_review: bool = Field(False, description="let a reviewer approve their own work (one-person projects)")


class ProjectSettingsIn(BaseModel):
    """Only what may change after creation; anything else is a 422, not silently ignored."""

    model_config = ConfigDict(extra="forbid")
    keep_original_names: bool | None = None
    allow_self_review: bool | None = None


class MemberIn(BaseModel):
    username: str
    role: str | None = Field(None, description="optional check: roles belong to accounts, not projects")


def project_json(project: Project) -> dict:
    return {"id": project.id, "name": project.name, "modality": project.modality,
            "labels": [c["name"] for c in project.label_classes], "label_classes": project.label_classes,
            "active_model_version_id": project.active_model_version_id,
            "keep_original_names": project.keep_original_names, "allow_self_review": project.allow_self_review,
            "created_at": project.created_at.isoformat()}


@router.get("/projects")
def list_projects(request: Request, user: User = Depends(current_user)) -> list[dict]:
    with store_of(request).transaction() as session:
        return [project_json(p) for p in projects.list_projects(session, user)]


@router.post("/projects", status_code=201)
def create_project(body: ProjectIn, request: Request, user: User = Depends(current_user)) -> dict:
    with store_of(request).transaction() as session:
        return project_json(projects.create_project(session, user, body.name, body.modality, body.labels,
                                                    keep_original_names=body.keep_original_names,
                                                    allow_self_review=body.allow_self_review))


@router.get("/projects/{pid}")
def get_project(pid: int, request: Request, user: User = Depends(current_user)) -> dict:
    with store_of(request).transaction() as session:
        return project_json(projects.get_project(session, user, pid))


@router.patch("/projects/{pid}")
def update_project(pid: int, body: ProjectSettingsIn, request: Request, user: User = Depends(current_user)) -> dict:
    with store_of(request).transaction() as session:
        return project_json(projects.update_project(session, user, pid, **body.model_dump(exclude_none=True)))


@router.post("/projects/{pid}/members")
def add_member(pid: int, body: MemberIn, request: Request, user: User = Depends(current_user)) -> dict:
    """Roles are per account (set by `medsam user add`); a role given here must match it, so
    nobody's rights in other projects change as a side effect of joining this one."""
    with store_of(request).transaction() as session:
        member = projects.add_member_by_name(session, user, pid, body.username, body.role)
        return {"project_id": pid, "username": member.username, "role": member.role.value}


@router.delete("/projects/{pid}")
def delete_project(pid: int, request: Request, user: User = Depends(current_user)) -> dict:
    with store_of(request).transaction() as session:
        projects.delete_project(session, user, pid)
    return {"deleted": "project", "id": pid}
