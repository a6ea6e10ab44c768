"""The playground page at ``/``: static files, no CDN; the page talks to the public API only."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).resolve().parent / "static"

router = APIRouter(include_in_schema=False)
assets = StaticFiles(directory=STATIC)


@router.get("/")
async def playground() -> FileResponse:
    return FileResponse(STATIC / "playground.html", media_type="text/html")
