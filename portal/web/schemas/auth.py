"""Tokens and the account behind them."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel


class TokenPublic(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"


class Revoked(BaseModel):
    revoked: bool


class UserPublic(BaseModel):
    id: int
    username: str
    role: str
