"""The explorer's web app: a FastAPI app over one :class:`Explorer`, and a static page.

No route takes a path: images are named by id (``d<index>`` of the data, ``u<n>`` of the uploads)
and static files come from the package's own folder, so nothing outside the given folders can be
read through the app. Uploads are read up to a size limit and decoded by Pillow with its
decompression-bomb guard; a bad request gets a JSON ``{"error": ...}`` with a 4xx status and the
server goes on. Routes are plain functions: FastAPI runs them on worker threads, and the explorer's
lock serializes the model.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.middleware.trustedhost import TrustedHostMiddleware

from traitlens.errors import TraitlensError
from traitlens.explain.methods import CLASSIFIER_METHODS
from traitlens.explore.session import Explorer

MAX_UPLOAD_BYTES = 16 << 20
PAGE_LIMIT = 200


class PatchesRequest(BaseModel):
    patches: list[int]


class SteerRequest(BaseModel):
    edits: list[str]
    patches: list[int] | None = None


def _png(data: bytes) -> Response:
    return Response(data, media_type="image/png", headers={"Cache-Control": "no-store"})


def create_app(explorer: Explorer, max_upload_bytes: int = MAX_UPLOAD_BYTES,
               allowed_hosts: Sequence[str] | None = None) -> FastAPI:
    """The app serving ``explorer``: the page at ``/``, its files under ``/static``, JSON and PNG under ``/api``.
    ``allowed_hosts``: the only Host headers answered (others get a 400), None for any."""
    app = FastAPI(title="traitlens explore", docs_url=None, redoc_url=None, openapi_url=None)
    if allowed_hosts is not None:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))
    static = resources.files("traitlens.explore") / "static"
    app.mount("/static", StaticFiles(directory=str(static)), name="static")

    @app.exception_handler(TraitlensError)
    def refused(request: Request, error: TraitlensError) -> JSONResponse:
        return JSONResponse({"error": str(error)}, status_code=400)

    @app.get("/")
    def page() -> FileResponse:
        return FileResponse(str(static / "index.html"))

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        return {"model": explorer.config.model, "sae": str(explorer.config.sae), "layer": explorer.layer,
                "tokens": explorer.tokens, "width": explorer.sae.config.width, "classes": explorer.class_names,
                "grid_hw": list(explorer.layout.grid_hw), "size_hw": list(explorer.backbone.preprocess.size_hw),
                "features": explorer.features is not None, "methods": list(CLASSIFIER_METHODS)}

    @app.get("/api/images")
    def images(offset: int = 0, limit: int = 48) -> dict[str, Any]:
        return explorer.images(max(offset, 0), min(max(limit, 1), PAGE_LIMIT))

    @app.get("/api/images/{image_id}/thumb.png")
    def thumbnail(image_id: str) -> Response:
        return _png(explorer.thumbnail(image_id))

    @app.get("/api/images/{image_id}/view.png")
    def view(image_id: str) -> Response:
        return _png(explorer.view(image_id))

    @app.get("/api/images/{image_id}/predict")
    def predict(image_id: str) -> dict[str, Any]:
        return explorer.predict(image_id)

    @app.post("/api/images/{image_id}/latents")
    def latents(image_id: str, request: PatchesRequest) -> dict[str, Any]:
        return {"latents": explorer.latents_at(image_id, request.patches)}

    @app.get("/api/images/{image_id}/latents/{latent}/map")
    def latent_map(image_id: str, latent: int) -> dict[str, Any]:
        return explorer.latent_map(image_id, latent)

    @app.post("/api/images/{image_id}/steer")
    def steer(image_id: str, request: SteerRequest) -> dict[str, Any]:
        return explorer.steer(image_id, request.edits, request.patches)

    @app.get("/api/images/{image_id}/cam.png")
    def cam(image_id: str, method: str = "grad-cam", target: str = "", reference: str = "") -> Response:
        return _png(explorer.cam(image_id, method, target or None, reference or None))

    @app.get("/api/latents/{latent}/top/{rank}.png")
    def top_image(latent: int, rank: int) -> Response:
        return _png(explorer.top_image(latent, rank))

    @app.post("/api/upload")
    async def upload(request: Request) -> JSONResponse:
        declared = request.headers.get("content-length", "")
        if declared.isdecimal() and int(declared) > max_upload_bytes:
            return JSONResponse({"error": f"the upload is larger than {max_upload_bytes >> 20} MiB"}, status_code=413)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_upload_bytes:
                return JSONResponse({"error": f"the upload is larger than {max_upload_bytes >> 20} MiB"}, status_code=413)
        if not body:
            return JSONResponse({"error": "the upload is empty"}, status_code=400)
        # decoded on a worker thread, like every other request, not on the event loop
        return JSONResponse({"id": await run_in_threadpool(explorer.add_upload, bytes(body))})

    return app



@contextmanager
def serving(explorer: Explorer, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve ``explorer`` on ``host:port`` (0: a free port) from a background thread while the
    block runs (from a notebook, a test, a script); yields the page's URL."""
    import uvicorn

    from traitlens.explore.cli import bind, trusted_host_names

    sock = bind(host, port)
    server = uvicorn.Server(uvicorn.Config(create_app(explorer, allowed_hosts=trusted_host_names(host)), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    if not server.started:
        server.should_exit = True
        raise TraitlensError(f"the explorer did not start on {host}:{sock.getsockname()[1]}")
    try:
        yield f"http://{host}:{sock.getsockname()[1]}/"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
