"""The explorer over HTTP: bad uploads and paths get a clear 4xx and the server goes on, nothing
outside the given folders is served, concurrent requests get what sequential ones get, and the
command line listens on loopback unless told otherwise."""

from __future__ import annotations

import io
import json
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.explore.conftest import MODEL, ExploreInputs
from traitlens.cli import main
from traitlens.explore import Explorer
from traitlens.explore.app import create_app
from traitlens.explore.cli import is_loopback, trusted_host_names


@pytest.fixture(scope="module")
def client(explorer: Explorer) -> TestClient:
    return TestClient(create_app(explorer, max_upload_bytes=64 << 10))


def _png(size: int = 40) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (200, 80, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_the_page_and_its_files_are_served(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "/static/explore.js" in page.text
    assert client.get("/static/explore.js").status_code == 200
    info = client.get("/api/info").json()
    assert info["layer"] == "blocks.1" and info["width"] == 96 and info["features"] is True
    assert client.get("/api/images?offset=0&limit=5").json()["total"] == 24


@pytest.mark.parametrize("body", [b"", b"GIF89a but not really", b"\x89PNG\r\n\x1a\n" + b"\x00" * 100, _png()[:60]])
def test_a_bad_upload_is_a_clear_400_and_the_server_goes_on(client: TestClient, body: bytes) -> None:
    refused = client.post("/api/upload", content=body)
    assert refused.status_code == 400 and refused.json()["error"]
    assert "Traceback" not in refused.text
    uploaded = client.post("/api/upload", content=_png())
    assert uploaded.status_code == 200
    assert client.get(f"/api/images/{uploaded.json()['id']}/predict").status_code == 200


def test_an_upload_over_the_limit_is_refused_unread(client: TestClient) -> None:
    too_big = client.post("/api/upload", content=b"\x00" * ((64 << 10) + 1))
    assert too_big.status_code == 413 and "larger than" in too_big.json()["error"]


@pytest.mark.parametrize("path", [
    "/static/../../../pyproject.toml", "/static/%2e%2e/%2e%2e/%2e%2e/pyproject.toml", "/static/..%2f..%2f..%2fpyproject.toml",
    "/api/images/..%2f..%2f..%2fpyproject.toml/thumb.png", "/api/images/%2fetc%2fpasswd/view.png", "/api/images/d-1/view.png",
    "/api/latents/0/top/../../../../etc/passwd", "/api/images/d0/../../../../etc/passwd",
])
def test_no_file_outside_the_given_folders_is_served(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code in (400, 404, 405)
    assert "[build-system]" not in response.text and "root:" not in response.text


def test_concurrent_requests_get_what_sequential_ones_get(explorer: Explorer, client: TestClient) -> None:
    requests = [(f"d{i % 6}", [f"{j}=zero" for j in range(i % 4 + 1)], [i % 16, 16 + i % 16]) for i in range(16)]

    def ask(request: tuple[str, list[str], list[int]]) -> tuple[object, object]:
        image_id, edits, patches = request
        latents = client.post(f"/api/images/{image_id}/latents", json={"patches": patches}).json()
        steered = client.post(f"/api/images/{image_id}/steer", json={"edits": edits, "patches": patches}).json()
        return latents, steered

    sequential = [ask(request) for request in requests]
    with ThreadPoolExecutor(max_workers=8) as pool:
        concurrent = list(pool.map(ask, requests))
    assert concurrent == sequential


def test_a_bad_request_body_is_a_4xx(client: TestClient) -> None:
    assert client.post("/api/images/d0/steer", json={"edits": ["3=zero"], "patches": [10_000]}).status_code == 400
    assert client.post("/api/images/d0/latents", json={"patches": "all"}).status_code == 422
    assert client.get("/api/images/d0/cam.png?method=nope").json()["error"].startswith("unknown method")


def test_only_loopback_is_loopback() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4") and not is_loopback("example.org")


def test_a_busy_port_is_one_line_before_the_model_loads(explore_inputs: ExploreInputs, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = main(["explore", "--model", MODEL, "--sae", str(explore_inputs.sae), "--port", str(port)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and f"cannot listen on 127.0.0.1:{port}" in err[0]


def test_the_live_server_answers_over_a_real_socket(server: str, tmp_path: Path) -> None:
    info = httpx.get(f"{server}/api/info", timeout=30).json()
    assert info["model"] == MODEL
    assert json.loads(httpx.post(f"{server}/api/upload", content=b"nope", timeout=30).text)["error"]


def test_a_loopback_server_answers_only_loopback_host_names(server: str) -> None:
    """A page whose domain is re-pointed to 127.0.0.1 (DNS rebinding) sends its own Host: refused."""
    assert httpx.get(f"{server}/api/info", timeout=30).status_code == 200
    port = server.rsplit(":", 1)[1]
    assert httpx.get(f"{server}/api/info", headers={"Host": f"localhost:{port}"}, timeout=30).status_code == 200
    assert httpx.get(f"{server}/api/info", headers={"Host": f"evil.example:{port}"}, timeout=30).status_code == 400
    assert trusted_host_names("0.0.0.0") is None and trusted_host_names("127.0.0.1") == ["127.0.0.1", "localhost", "[::1]"]
