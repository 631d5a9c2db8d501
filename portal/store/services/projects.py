"""Projects, membership and who may see what."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from portal.store.errors import DuplicateError, NotFoundError, StoreError
from portal.store.label_colours import HEX as COLOUR
from portal.store.label_colours import default_colour, label_colour
from portal.store.models import Annotation, Image, Project, ProjectMember, Role, User, Volume
from portal.store.services.audit import record
from portal.store.services.users import require_role


def _label_classes(classes: list[Any]) -> list[dict[str, Any]]:
    out, seen = [], set()
    for i, item in enumerate(classes or [{"name": "lesion"}]):
        entry = {"name": item} if isinstance(item, str) else dict(item)
        name = str(entry.get("name", "")).strip()
        colour = entry.get("color") or default_colour(i)
        if not name or len(name) > 64:
            raise StoreError("each label class needs a name of 1-64 characters")
        if name in seen:
            raise StoreError(f"label class '{name}' is listed twice")
        if not COLOUR.match(colour):
            raise StoreError(f"label class '{name}' has colour '{colour}'; use #rrggbb")
        seen.add(name)
        out.append({"name": name, "color": colour})
    return out


SWITCHES = ("keep_original_names", "allow_self_review")


def _switches(values: dict[str, Any]) -> dict[str, bool]:
    unknown = sorted(set(values) - set(SWITCHES))
    if unknown:
        raise StoreError(f"unknown project setting(s) {', '.join(unknown)}; the settings are {', '.join(SWITCHES)}")
    for key, value in values.items():
        if not isinstance(value, bool):
            raise StoreError(f"'{key}' is true or false, not {value!r}")
    return dict(values)


def create_project(
    session: Session,
    actor: User,
    name: str,
    modality: str = "other",
    label_classes: list[Any] | None = None,
    **switches: bool,
) -> Project:
    """``switches``: keep_original_names (DICOM upload names, off: they often name the patient) and
    allow_self_review (for single-person projects), both off unless asked for."""
    require_role(actor, Role.admin, doing="create projects")
    switches = _switches(switches)
    name = name.strip()
    if not name or len(name) > 128:
        raise StoreError("a project name has 1-128 characters")
    if not isinstance(modality, str) or not 0 < len(modality) <= 32:
        raise StoreError("a modality is a short name such as ct, mr, us, endoscopy or other")
    if session.scalar(select(Project).where(Project.name == name)):
        raise DuplicateError(f"a project named '{name}' already exists")
    project = Project(
        name=name,
        modality=modality,
        label_classes=_label_classes(label_classes or []),
        created_by=actor.id,
        **{k: switches.get(k, False) for k in SWITCHES},
    )
    session.add(project)
    session.flush()
    session.add(ProjectMember(project_id=project.id, user_id=actor.id))
    record(
        session,
        actor,
        "project.create",
        "project",
        project.id,
        project.id,
        name=name,
        **{k: getattr(project, k) for k in SWITCHES},
    )
    return project


def update_project(session: Session, actor: User, project_id: int, **switches: bool) -> Project:
    """Admins flip a project's switches; the audit keeps each old and new value. Outsiders get the
    same answer as for a missing project before the role is even considered."""
    project = get_project(session, actor, project_id)
    require_role(actor, Role.admin, doing="change project settings")
    changes = {
        k: {"from": getattr(project, k), "to": v} for k, v in _switches(switches).items() if getattr(project, k) != v
    }
    for key, change in changes.items():
        setattr(project, key, change["to"])
    if changes:
        record(session, actor, "project.update", "project", project.id, project.id, **changes)
    return project


def add_member_by_name(session: Session, actor: User, project_id: int, username: str, role: str | None = None) -> User:
    """Rights first, then the lookup: only an admin may learn whether an account exists and its role."""
    require_role(actor, Role.admin, doing="add project members")
    get_project(session, actor, project_id)
    member = session.scalar(select(User).where(User.username == username))
    if member is None:
        raise NotFoundError(f"no user '{username}'; create it with `medsam user add`")
    if role is not None and role != member.role.value:
        raise StoreError(
            f"{member.username} is an {member.role.value}; roles belong to accounts, not projects "
            "(leave 'role' out, or change the account's role)"
        )
    add_member(session, actor, project_id, member)
    return member


def add_member(session: Session, actor: User, project_id: int, user: User) -> None:
    require_role(actor, Role.admin, doing="add project members")
    get_project(session, actor, project_id)
    if session.get(ProjectMember, (project_id, user.id)) is None:
        session.add(ProjectMember(project_id=project_id, user_id=user.id))
        record(session, actor, "project.member.add", "project", project_id, project_id, user=user.username)


def members(session: Session, actor: User, project_id: int) -> list[User]:
    """Who works on a project, by name; an admin's view (it tells which accounts exist)."""
    require_role(actor, Role.admin, doing="list project members")
    get_project(session, actor, project_id)
    return list(
        session.scalars(
            select(User)
            .join(ProjectMember, ProjectMember.user_id == User.id)
            .where(ProjectMember.project_id == project_id)
            .order_by(User.username)
        )
    )


def is_member(session: Session, user: User, project_id: int | None) -> bool:
    if user.role == Role.admin:
        return True
    return project_id is not None and session.get(ProjectMember, (project_id, user.id)) is not None


def not_found(what: str, *, trusted: bool = False) -> NotFoundError:
    """The same words whether ``what`` is missing or in someone else's project, so probing ids reveals nothing.

    A ``trusted`` caller (a worker, the CLI: no acting user) sees everything, so "does not exist" is simply true.
    """
    if trusted:
        return NotFoundError(f"{what} does not exist")
    if what.startswith("project "):
        return NotFoundError(f"{what} not found (or you are not a member)")
    return NotFoundError(f"{what} not found (or you are not a member of its project)")


def get_project(session: Session, user: User, project_id: int | None, *, what: str | None = None) -> Project:
    """The project, if ``user`` may see it: members see theirs, admins see all.

    ``what`` names the thing being reached through the project ("image 5"), so a
    refusal speaks of that and never of the project's id or name.
    """
    project = session.get(Project, project_id) if project_id is not None else None
    if project is None or not is_member(session, user, project_id):
        raise not_found(what or f"project {project_id}")
    return project


def existing_project(session: Session, project_id: int) -> Project:
    """The project for a trusted caller that already holds its id (a checked request, a job row)."""
    project = session.get(Project, project_id)
    if project is None:
        raise not_found(f"project {project_id}", trusted=True)
    return project


def list_projects(session: Session, user: User) -> list[Project]:
    query = select(Project).order_by(Project.name)
    if user.role != Role.admin:
        query = query.join(ProjectMember).where(ProjectMember.user_id == user.id)
    return list(session.scalars(query))


def label_names(project: Project) -> list[str]:
    return [c["name"] for c in project.label_classes]


def label_colours(session: Session, user: User, project_id: int) -> dict[str, str]:
    """``{label: "#rrggbb"}`` of a project the user may see (``label_colour`` decides each)."""
    project = get_project(session, user, project_id)
    return {name: label_colour(project.label_classes, name) for name in label_names(project)}


def annotation_colour(session: Session, user: User, annotation_id: int) -> tuple[str, str]:
    """(label, ``#rrggbb``) of an annotation the user may see, for drawing it in its label's colour."""
    what = f"annotation {annotation_id}"
    ann = session.get(Annotation, annotation_id)
    owner = annotation_owner(session, ann) if ann is not None else None
    if ann is None or owner is None:
        raise not_found(what)
    return ann.label, label_colour(get_project(session, user, owner.project_id, what=what).label_classes, ann.label)


def annotation_owner(session: Session, annotation: Annotation) -> Image | Volume | None:
    """What an annotation labels: its image (a 2-D mask) or its volume (a 3-D label map); the project is the
    owner's, so every lookup of an annotation's project goes through here and none forgets the volumes."""
    if annotation.image_id is not None:
        return session.get(Image, annotation.image_id)
    return session.get(Volume, annotation.volume_id) if annotation.volume_id is not None else None


def delete_project(session: Session, actor: User, project_id: int) -> None:
    """Rows go now (cascading to images, masks, annotations); blobs go at the next gc."""
    require_role(actor, Role.admin, doing="delete projects")
    project = get_project(session, actor, project_id)
    record(session, actor, "project.delete", "project", project_id, project_id, name=project.name)
    session.delete(project)
