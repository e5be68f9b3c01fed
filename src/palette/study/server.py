"""``palette study serve``: the observers' web page, a small Starlette app on uvicorn over the study database.

Plain HTML and JavaScript rather than Gradio: the pair must stay on screen for exactly the display time and the arrow
keys must answer, both of which need control of the page's frames and events that Gradio's components do not give.
Observers are known by a random token in an HttpOnly, SameSite=Strict cookie; the server decides which trial comes
next, serves its images only while it is handed out, and accepts one answer for it. Request bodies are limited to
``MAX_BODY`` bytes.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from . import db
from .page import PAGE
from .sessions import Refused, Study

log = logging.getLogger(__name__)

MAX_BODY = 1024  # bytes: the largest request is an answer, about 100 bytes of JSON
MAX_POSITION = 2**31  # beyond any study; a number past SQLite's 64-bit integers would fail as a 500
GAP_MS = 500  # blank panels between two trials
COOKIE_DAYS = 30
NO_STORE = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


class _BadRequest(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=NO_STORE)


async def _json_body(request: Request) -> dict:
    if int(request.headers.get("content-length") or 0) > MAX_BODY:
        raise _BadRequest(413, f"request body over {MAX_BODY} bytes")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise _BadRequest(413, f"request body over {MAX_BODY} bytes")
    try:
        data = json.loads(body or b"{}")
    except (ValueError, RecursionError):  # RecursionError: a kilobyte of nested brackets
        raise _BadRequest(400, "the body is not JSON") from None
    if not isinstance(data, dict):
        raise _BadRequest(400, "the body must be a JSON object")
    return data


def _milliseconds(data: dict, key: str, optional: bool = False) -> float | None:
    value = data.get(key)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0 <= value <= 86_400_000:
        raise _BadRequest(400, f"{key} must be a number of milliseconds")
    return float(value)


class ObserverPage:
    """The endpoints of one study's page. Every one is ``async def``, so they run one at a time on the event loop's
    thread and share the study's one database connection (a plain ``def`` endpoint would run in Starlette's thread
    pool and share it across threads)."""

    def __init__(self, study: Study):
        self.study = study
        s = study.settings
        self.cookie = s["cookie"]
        config = json.dumps({"question": s["question"], "display_ms": s["display_ms"],
                             "trials": s["trials_per_observer"], "gap_ms": GAP_MS})
        self.page = PAGE.replace("__CONFIG__", config.replace("</", "<\\/"))

    def routes(self) -> list[Route]:
        return [
            Route("/", self.index),
            Route("/api/state", self.get_state),
            Route("/api/start", self.start, methods=["POST"]),
            Route("/api/next", self.next_trial, methods=["POST"]),
            Route("/api/image/{position:int}/{side}", self.image),
            Route("/api/answer", self.answer, methods=["POST"]),
        ]

    def observer_of(self, request: Request) -> int | None:
        return self.study.observer(request.cookies.get(self.cookie))

    def state(self, observer_id: int | None) -> dict:
        if observer_id is None:
            return {"observer": False}
        progress = self.study.progress(observer_id)
        return {"observer": True, "answered": progress.answered, "total": progress.total,
                "finished": progress.finished}

    async def index(self, request: Request) -> Response:
        return HTMLResponse(self.page, headers=NO_STORE)

    async def get_state(self, request: Request) -> Response:
        return JSONResponse(self.state(self.observer_of(request)), headers=NO_STORE)

    async def start(self, request: Request) -> Response:
        await _json_body(request)
        observer_id = self.observer_of(request)
        if observer_id is not None:
            return JSONResponse(self.state(observer_id), headers=NO_STORE)
        token = self.study.register()
        response = JSONResponse(self.state(self.study.observer(token)), headers=NO_STORE)
        response.set_cookie(self.cookie, token, max_age=COOKIE_DAYS * 86400, httponly=True, samesite="strict")
        return response

    async def next_trial(self, request: Request) -> Response:
        await _json_body(request)
        observer_id = self.observer_of(request)
        if observer_id is None:
            return _error(403, "no observer: open the page and start the study first")
        position = self.study.hand_out(observer_id)
        progress = self.study.progress(observer_id)
        return JSONResponse({"position": position, "answered": progress.answered, "total": progress.total,
                             "finished": position is None}, headers=NO_STORE)

    async def image(self, request: Request) -> Response:
        observer_id = self.observer_of(request)
        png = None if observer_id is None else self.study.image(observer_id, request.path_params["position"],
                                                                    request.path_params["side"])
        if png is None:
            return _error(404, "no such image: only the trial handed out to you is shown")
        return Response(png, media_type="image/png", headers=NO_STORE)

    async def answer(self, request: Request) -> Response:
        observer_id = self.observer_of(request)
        if observer_id is None:
            return _error(403, "no observer: open the page and start the study first")
        data = await _json_body(request)
        position = data.get("position")
        if isinstance(position, bool) or not isinstance(position, int) or not 0 <= position < MAX_POSITION:
            raise _BadRequest(400, "position must be a trial number")
        try:
            progress = self.study.answer(observer_id, position, str(data.get("choice")),
                                         _milliseconds(data, "response_ms"),
                                         _milliseconds(data, "shown_ms", optional=True))
        except Refused as err:
            return _error(409, str(err))
        return JSONResponse({"answered": progress.answered, "total": progress.total,
                             "finished": progress.finished}, headers=NO_STORE)


async def _bad_request(request: Request, err: _BadRequest) -> Response:
    return _error(err.status, str(err))


def make_app(db_path: str | Path) -> Starlette:
    study = Study(db.open_database(db_path))
    app = Starlette(routes=ObserverPage(study).routes(), exception_handlers={_BadRequest: _bad_request})
    app.state.study = study
    return app


def serve(db_path: str | Path, host: str = "127.0.0.1", port: int = 7861) -> None:
    """Serve the study until stopped. Its line naming the address is printed once the port takes connections (they
    wait in the socket's backlog until the server's loop accepts them), so a script may wait on that line."""
    import uvicorn

    app = make_app(db_path)
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s: anyone who can reach this machine can take part", host)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", limit_concurrency=100,
                            timeout_keep_alive=5)
    listening = config.bind_socket()
    listening.listen(config.backlog)
    print(f"study {app.state.study.settings['name']!r}: http://{host}:{port}/ (Ctrl+C to stop)", flush=True)
    uvicorn.Server(config).run(sockets=[listening])
