"""Append-only audit trail, written in the same transaction as the change it records."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from portal.store.models import AuditEvent, User


def record(
    session: Session,
    actor: User | None,
    action: str,
    target_type: str,
    target_id: int | None,
    project_id: int | None = None,
    **details: Any,
) -> None:
    session.add(
        AuditEvent(
            actor_id=actor.id if actor else None,
            actor_name=actor.username if actor else None,
            action=action,
            target_type=target_type,
            target_id=target_id,
            project_id=project_id,
            details=details,
        )
    )
