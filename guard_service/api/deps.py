"""FastAPI dependencies: the process-wide objects routes need, taken from `app.state`."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from guard_service.config import Settings
from guard_service.engine import EngineHolder


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_holder(request: Request) -> EngineHolder:
    return request.app.state.engine


SettingsDep = Annotated[Settings, Depends(get_settings)]
HolderDep = Annotated[EngineHolder, Depends(get_holder)]
