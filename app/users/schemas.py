from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from app.schemas import CamelModel

Role = Literal["admin", "sender"]
UserName = str


class UserCreate(CamelModel):
    name: str = Field(min_length=1, max_length=50, pattern=r"^[A-Za-z0-9_.@-]+$")
    role: Role
    password: str | None = Field(None, min_length=12, max_length=1000)
    """Generated and returned once when omitted."""


class UserUpdate(CamelModel):
    role: Role | None = None
    password: str | None = Field(None, min_length=12, max_length=1000)


class UserOut(CamelModel):
    name: str
    role: Role
    created_at: datetime


class UserCreated(UserOut):
    password: str | None = None
    """Only when it was generated: shown once, never again."""


class UserList(CamelModel):
    items: list[UserOut]
