"""Bearer tokens for the API (OAuth2 password flow) and the first admin account.

Tokens are the store's API tokens: random, kept only as a SHA-256, revocable.
The token route takes a form, as FastAPI's OAuth2 flow and the "Authorize"
button of /api/docs expect. Logins here and in the UI go through the same
throttled ``users.login``; a locked account or address is answered 429.
"""

from __future__ import annotations

import secrets
import sys

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.security import OAuth2PasswordBearer, OAuth2PasswordRequestForm

from portal.store.errors import DuplicateError
from portal.store.models import User
from portal.store.services import users
from portal.store.store import Store
from portal.web.deps import Db
from portal.web.schemas.auth import Revoked, TokenPublic, UserPublic

TOKEN_URL = "/api/v1/auth/token"
_bearer = OAuth2PasswordBearer(tokenUrl=TOKEN_URL, auto_error=False)
router = APIRouter(prefix="/api/v1", tags=["auth"])


def _unauthorised(message: str) -> HTTPException:
    return HTTPException(status_code=401, detail=message, headers={"WWW-Authenticate": "Bearer"})


def too_many_logins(retry_after: int) -> HTTPException:
    return HTTPException(
        status_code=429,
        headers={"Retry-After": str(retry_after)},
        detail=f"too many failed logins for this account or from this address; try again in {retry_after} s",
    )


def client_address(scope) -> str | None:
    """The peer as the ASGI server reports it (uvicorn applies X-Forwarded-For only from trusted proxies)."""
    client = scope.get("client")
    return client[0] if client else None


def current_user(request: Request, token: str | None = Depends(_bearer)) -> User:
    """The user behind ``Authorization: Bearer …``; 401 (with WWW-Authenticate) otherwise."""
    if not token:
        raise _unauthorised(
            f"log in first: POST {TOKEN_URL} with username and password, then send "
            "'Authorization: Bearer <access_token>'"
        )
    with request.app.state.store.transaction() as session:
        user = users.user_for_token(session, token)
    if user is None:
        raise _unauthorised("the token is unknown, expired or revoked; log in again")
    return user


@router.post("/auth/token", response_model=TokenPublic)
def login(request: Request, form: OAuth2PasswordRequestForm = Depends()) -> TokenPublic:
    # Its own transaction, not the request's: the failed or refused attempt is committed (counted,
    # audited) before the refusal goes out, where the request's would roll it back with the error.
    with request.app.state.store.transaction() as session:
        outcome = users.login(
            session, form.username, form.password, client_address(request.scope), request.app.state.settings
        )
        token = users.issue_token(session, outcome.user) if outcome.user is not None else None
    if outcome.retry_after:
        raise too_many_logins(outcome.retry_after)
    if token is None:
        raise _unauthorised("wrong username or password")
    return TokenPublic(access_token=token, token_type="bearer")


@router.delete("/auth/token", response_model=Revoked)
def logout(db: Db, token: str | None = Depends(_bearer), user: User = Depends(current_user)) -> Revoked:
    """Revoke the token this request carries; the user's other clients keep theirs."""
    users.revoke_token(db, user, token)
    return Revoked(revoked=True)


@router.get("/auth/me", response_model=UserPublic)
def me(user: User = Depends(current_user)) -> UserPublic:
    return UserPublic(id=user.id, username=user.username, role=user.role.value)


def ensure_first_admin(store: Store) -> str | None:
    """With no account at all, nobody could ever log in: create ``admin`` and say its password once."""
    password = secrets.token_urlsafe(12)
    try:
        with store.transaction() as session:
            created = users.create_first_admin(session, password)
    except DuplicateError:
        return None  # another process of this deployment created it first
    if created is None:
        return None
    print(
        "\n"
        + "=" * 72
        + "\nmedsam: created the first account, 'admin', with password:\n\n    "
        + password
        + "\n\nIt is shown only this once. Log in and change it with:\n    medsam user passwd admin\n"
        + "=" * 72
        + "\n",
        file=sys.stderr,
        flush=True,
    )
    return password
