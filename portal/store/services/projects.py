"""Projects, membership and who may see what."""

from __future__ import annotations

import re

from sqlalchemy import select
from sqlalchemy.orm import Session

from portal.store.errors import DuplicateError, NotFoundError, PermissionDeniedError, StoreError
from portal.store.models import Project, ProjectMember, Role, User
from portal.store.services.audit import record
from portal.store.services.users import require_role

COLOUR = re.compile(r"^#[0-9a-fA-F]{6}$")
DEFAULT_COLOURS = ["#e6194b", "#3cb44b", "#ffe119", "#0082c8", "#f58231", "#911eb4", "#46f0f0", "#f032e6"]


def _label_classes(classes: list) -> list[dict]:
    out, seen = [], set()
    for i, item in enumerate(classes or [{"name": "lesion"}]):
        entry = {"name": item} if isinstance(item, str) else dict(item)
        name = str(entry.get("name", "")).strip()
        colour = entry.get("color") or DEFAULT_COLOURS[i % len(DEFAULT_COLOURS)]
        if not name or len(name) > 64:
            raise StoreError("each label class needs a name of 1-64 characters")
        if name in seen:
            raise StoreError(f"label class '{name}' is listed twice")
        if not COLOUR.match(colour):
            raise StoreError(f"label class '{name}' has colour '{colour}'; use #rrggbb")
        seen.add(name)
        out.append({"name": name, "color": colour})
    return out


def create_project(session: Session, actor: User, name: str, modality: str = "other",
                   label_classes: list | None = None) -> Project:
    require_role(actor, Role.admin, doing="create projects")
    name = name.strip()
    if not name or len(name) > 128:
        raise StoreError("a project name has 1-128 characters")
    if not isinstance(modality, str) or not 0 < len(modality) <= 32:
        raise StoreError("a modality is a short name such as ct, mr, us, endoscopy or other")
    if session.scalar(select(Project).where(Project.name == name)):
        raise DuplicateError(f"a project named '{name}' already exists")
    project = Project(name=name, modality=modality, label_classes=_label_classes(label_classes or []),
                      created_by=actor.id)
    session.add(project)
    session.flush()
    session.add(ProjectMember(project_id=project.id, user_id=actor.id))
    record(session, actor, "project.create", "project", project.id, project.id, name=name)
    return project


def add_member(session: Session, actor: User, project_id: int, user: User) -> None:
    require_role(actor, Role.admin, doing="add project members")
    get_project(session, actor, project_id)
    if session.get(ProjectMember, (project_id, user.id)) is None:
        session.add(ProjectMember(project_id=project_id, user_id=user.id))
        record(session, actor, "project.member.add", "project", project_id, project_id, user=user.username)


def is_member(session: Session, user: User, project_id: int) -> bool:
    return user.role == Role.admin or session.get(ProjectMember, (project_id, user.id)) is not None


def get_project(session: Session, user: User, project_id: int) -> Project:
    """The project, if ``user`` may see it: members see theirs, admins see all."""
    project = session.get(Project, project_id)
    if project is None:
        raise NotFoundError(f"project {project_id} does not exist")
    if not is_member(session, user, project_id):
        raise PermissionDeniedError(f"{user.username} is not a member of project '{project.name}'")
    return project


def list_projects(session: Session, user: User) -> list[Project]:
    query = select(Project).order_by(Project.name)
    if user.role != Role.admin:
        query = query.join(ProjectMember).where(ProjectMember.user_id == user.id)
    return list(session.scalars(query))


def label_names(project: Project) -> list[str]:
    return [c["name"] for c in project.label_classes]


def delete_project(session: Session, actor: User, project_id: int) -> None:
    """Rows go now (cascading to images, masks, annotations); blobs go at the next gc."""
    require_role(actor, Role.admin, doing="delete projects")
    project = get_project(session, actor, project_id)
    record(session, actor, "project.delete", "project", project_id, project_id, name=project.name)
    session.delete(project)
