"""``GET /api/usage``: what each tenant used, per UTC day (``store/usage_store.py``): a tenant sees its own, an
admin every tenant's (or one's, with ``tenant``)."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, Query

from serve_app.config import AppConfig
from serve_app.errors import Forbidden
from serve_app.ingress.dependencies import app_config, caller
from serve_app.ingress.error_responses import documented_errors
from serve_app.store import usage_store
from serve_app.store.tenants import Principal

router = APIRouter(tags=["usage"], responses=documented_errors(401, 403, 422, 429))
MAX_DAYS = 366


@router.get("/api/usage", summary="Requests, characters in, audio seconds out and job items, per tenant and UTC day")
async def usage(
    who: Annotated[Principal, Depends(caller)],
    config: Annotated[AppConfig, Depends(app_config)],
    days: Annotated[int, Query(ge=1, le=MAX_DAYS, description="The last this many days, newest first.")] = 30,
    tenant: Annotated[str | None, Query(max_length=100, description="Admins: one tenant's only.")] = None,
) -> dict:
    """Counted as answers complete (on the WebSocket: each sentence), written by each replica within seconds."""
    if tenant is not None and not who.admin and tenant != who.tenant:
        raise Forbidden("only admins read another tenant's usage", "tenant")
    chosen = tenant if tenant is not None or who.admin else who.tenant
    return {"usage": await asyncio.to_thread(usage_store.read, config.usage_dir, chosen, days)}
