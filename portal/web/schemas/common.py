"""Shapes several concepts share: timestamps as the API has always written them, and deletion receipts."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, PlainSerializer

# ``datetime.isoformat()``, not Pydantic's own form (which writes UTC as "Z"): clients parse what they always got.
IsoDatetime = Annotated[datetime, PlainSerializer(lambda value: value.isoformat(), return_type=str)]


class Deleted(BaseModel):
    deleted: str  # what kind of thing: "project", "image"
    id: int
