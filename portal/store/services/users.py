"""Accounts: slow hashes for passwords, SHA-256 for high-entropy API tokens."""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import datetime, timedelta, timezone

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from portal.store.errors import DuplicateError, PermissionDeniedError, StoreError
from portal.store.models import ApiToken, Role, User
from portal.store.services.audit import record

_hasher = PasswordHasher()
USERNAME = re.compile(r"^[A-Za-z0-9_.@-]{2,64}$")
MIN_PASSWORD = 8


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_user(session: Session, username: str, password: str, role: Role | str = Role.annotator,
                actor: User | None = None) -> User:
    if not USERNAME.match(username):
        raise StoreError("a username is 2-64 letters, digits or . _ @ -")
    if len(password) < MIN_PASSWORD:
        raise StoreError(f"a password needs at least {MIN_PASSWORD} characters")
    try:
        role = Role(role)
    except ValueError:
        raise StoreError(f"unknown role '{role}'; choose annotator, reviewer or admin") from None
    if session.scalar(select(User).where(User.username == username)):
        raise DuplicateError(f"user '{username}' already exists")
    user = User(username=username, password_hash=_hasher.hash(password), role=role)
    session.add(user)
    session.flush()
    record(session, actor, "user.create", "user", user.id, role=role.value, username=username)
    return user


def set_password(session: Session, username: str, password: str, actor: User | None = None) -> User:
    """Replace a password and revoke the user's API tokens, which were issued under the old one."""
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        raise StoreError(f"no user '{username}'")
    if len(password) < MIN_PASSWORD:
        raise StoreError(f"a password needs at least {MIN_PASSWORD} characters")
    user.password_hash = _hasher.hash(password)
    for token in session.scalars(select(ApiToken).where(ApiToken.user_id == user.id, ApiToken.revoked.is_(False))):
        token.revoked = True
    record(session, actor, "user.password", "user", user.id, username=username)
    return user


def authenticate(session: Session, username: str, password: str) -> User | None:
    user = session.scalar(select(User).where(User.username == username))
    ok = False
    if user is not None and user.is_active:
        try:
            ok = _hasher.verify(user.password_hash, password)
        except (VerificationError, InvalidHashError):
            ok = False
    record(session, user if ok else None, "login" if ok else "login.failed", "user",
           user.id if user else None, username=username)
    return user if ok else None


def issue_token(session: Session, user: User, name: str = "api", ttl_days: int | None = 90) -> str:
    """The plain token is returned once and never stored."""
    token = secrets.token_urlsafe(32)
    expires = datetime.now(timezone.utc) + timedelta(days=ttl_days) if ttl_days else None
    session.add(ApiToken(user_id=user.id, token_sha256=token_digest(token), name=name, expires_at=expires))
    record(session, user, "token.issue", "user", user.id, name=name)
    return token


def user_for_token(session: Session, token: str) -> User | None:
    row = session.scalar(select(ApiToken).where(ApiToken.token_sha256 == token_digest(token)))
    if row is None or row.revoked:
        return None
    if row.expires_at is not None and _aware(row.expires_at) < datetime.now(timezone.utc):
        return None
    return row.user if row.user.is_active else None


def require_role(user: User, *roles: Role, doing: str) -> None:
    if user.role not in roles:
        allowed = " or ".join(r.value for r in roles)
        raise PermissionDeniedError(f"{user.username} is an {user.role.value}; only a {allowed} may {doing}")


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
