"""Projects and membership. Members see their projects; admins see all and manage them."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from portal.store.models import User
from portal.store.services import projects
from portal.web.api import PREFIX, Db
from portal.web.auth import current_user
from portal.web.schemas.common import Deleted
from portal.web.schemas.projects import MemberIn, MemberPublic, ProjectIn, ProjectPublic, ProjectSettingsIn

router = APIRouter(prefix=PREFIX, tags=["projects"])


@router.get("/projects", response_model=list[ProjectPublic])
def list_projects(db: Db, user: User = Depends(current_user)) -> list[ProjectPublic]:
    return [ProjectPublic.of(p) for p in projects.list_projects(db, user)]


@router.post("/projects", status_code=201, response_model=ProjectPublic)
def create_project(body: ProjectIn, db: Db, user: User = Depends(current_user)) -> ProjectPublic:
    return ProjectPublic.of(
        projects.create_project(
            db,
            user,
            body.name,
            body.modality,
            body.labels,
            keep_original_names=body.keep_original_names,
            allow_self_review=body.allow_self_review,
        )
    )


@router.get("/projects/{pid}", response_model=ProjectPublic)
def get_project(pid: int, db: Db, user: User = Depends(current_user)) -> ProjectPublic:
    return ProjectPublic.of(projects.get_project(db, user, pid))


@router.patch("/projects/{pid}", response_model=ProjectPublic)
def update_project(pid: int, body: ProjectSettingsIn, db: Db, user: User = Depends(current_user)) -> ProjectPublic:
    return ProjectPublic.of(projects.update_project(db, user, pid, **body.model_dump(exclude_none=True)))


@router.post("/projects/{pid}/members", response_model=MemberPublic)
def add_member(pid: int, body: MemberIn, db: Db, user: User = Depends(current_user)) -> MemberPublic:
    """Roles are per account (set by `medsam user add`); a role given here must match it, so
    nobody's rights in other projects change as a side effect of joining this one."""
    member = projects.add_member_by_name(db, user, pid, body.username, body.role)
    return MemberPublic(project_id=pid, username=member.username, role=member.role.value)


@router.delete("/projects/{pid}", response_model=Deleted)
def delete_project(pid: int, db: Db, user: User = Depends(current_user)) -> Deleted:
    projects.delete_project(db, user, pid)
    return Deleted(deleted="project", id=pid)
