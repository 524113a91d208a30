"""The web dashboard: static files in ``gyoza/ui`` served at ``/ui``.

The page itself needs no API key (it holds no data); every API call it makes
sends ``X-API-Key`` when the server has keys. ``/`` redirects to ``/ui/``.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

UI_DIR = Path(__file__).with_name("ui")


class _UiFiles(StaticFiles):
    """StaticFiles that asks browsers to revalidate, so an upgrade shows at once."""

    def file_response(self, *args, **kwargs) -> Response:  # type: ignore[override]
        response = super().file_response(*args, **kwargs)
        response.headers["Cache-Control"] = "no-cache"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        return response


async def _to_ui(request: Request) -> Response:
    # A path, not an absolute URL: right behind a proxy that rewrites the host.
    return RedirectResponse(url=request.scope.get("root_path", "") + "/ui/", status_code=307)


def ui_routes() -> list[BaseRoute]:
    """``/`` → ``/ui/``, and the dashboard's files under ``/ui``."""
    return [
        Route("/", _to_ui, methods=["GET", "HEAD"]),
        Mount("/ui", app=_UiFiles(directory=UI_DIR, html=True), name="ui"),
    ]
