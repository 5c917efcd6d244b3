"""One real guard-service (real vLLM engine, embedded model) per test session, driven over HTTP."""

from __future__ import annotations

import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import httpx
import openai
import pytest

from bench.common import free_port
from bench.processes import (
    ADMIN_TOKEN,
    MAX_DOCUMENT_BYTES,
    MODEL_NAME,
    ROOT,
    VIEWER_TOKEN,
    LocalPostgres,
    Server,
    fresh_database,
    launch_server,
    local_postgres,
    postgres_bin,
    start_server,
    stop_server,
    wait_healthy,
)

T, R = TypeVar("T"), TypeVar("R")
__all__ = ["ADMIN_TOKEN", "MAX_DOCUMENT_BYTES", "MODEL_NAME", "ROOT", "VIEWER_TOKEN", "LocalPostgres", "Server",
           "concurrently", "fresh_database", "free_port", "start_server", "stop_server"]


def concurrently(call: Callable[[T], R], items: Iterable[T], workers: int = 16) -> list[R]:
    """`call` on every item at once, results in order: the engine batches them instead of answering one after
    another (greedy answers do not depend on the batch: 48 prompts answered one at a time and 4, 16 or 48 at
    once came out identical on this machine)."""
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(call, items))


def read_response(sock: socket.socket) -> bytes:
    """One whole HTTP/1.1 response (head and Content-Length body) from a raw socket, however it is split."""
    data = b""
    while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < _content_length(data):
        part = sock.recv(65536)
        if not part:
            break
        data += part
    return data


def _content_length(data: bytes) -> int:
    for line in data.partition(b"\r\n\r\n")[0].split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def _model_dir() -> Path:
    from guard_service.config import Settings
    from guard_service.model_prep import prepare_model

    settings = Settings()
    return settings.model if settings.model else prepare_model(settings.resolved_model_path())


@pytest.fixture(scope="session")
def model_dir() -> Path:
    return _model_dir()


# The session's server: a 5 s head timeout (the idle-connection test waits it out; the default, 15 s, is only a
# number) and a 60 s drain (test_soak ends it with SIGTERM while a long stream and a request are in flight).
SESSION_ENV = {"GUARD_HEAD_TIMEOUT_S": "5", "GUARD_DRAIN_S": "60"}
_LAUNCHED = pytest.StashKey[Server]()
# Module order: what needs no engine first (while the session's server starts), then what uses the session's
# server, then the modules that start servers of their own (`own_engine`), and test_soak last: it ends the
# session's server.
_ORDER_NO_ENGINE, _ORDER_SESSION, _ORDER_OWN, _ORDER_LAST = range(4)


def _module_order(items: list[pytest.Item]) -> int:
    if any(item.get_closest_marker("ends_session_server") for item in items):
        return _ORDER_LAST
    if any(item.get_closest_marker("own_engine") for item in items):
        return _ORDER_OWN
    return _ORDER_SESSION if any("server" in item.fixturenames for item in items) else _ORDER_NO_ENGINE


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "own_engine: the module starts guard-service servers of its own")
    config.addinivalue_line("markers", "ends_session_server: the module stops the session's server (runs last)")


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """Modules in the order above (each module's tests keep theirs), and the session's server launched now if
    any selected test needs it: it loads while the tests that need no engine run."""
    modules: dict[str, list[pytest.Item]] = {}
    for item in items:
        modules.setdefault(item.nodeid.split("::")[0], []).append(item)
    ranked = sorted(modules.values(), key=_module_order)  # stable: alphabetical within a rank
    items[:] = [item for group in ranked for item in group]
    if not config.option.collectonly and any("server" in item.fixturenames for item in items):
        _model_dir()
        workdir = Path(tempfile.mkdtemp(prefix="guard-session-server-"))
        config.stash[_LAUNCHED] = launch_server(workdir, SESSION_ENV)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The session's server stopped even if no test took it (a run that failed first; a no-op if a test stopped
    it already); its folder (store, artifacts, log) kept when something failed."""
    launched = session.config.stash.get(_LAUNCHED, None)
    if launched is not None:
        stop_server(launched)
        if exitstatus == 0:
            shutil.rmtree(launched.log.parent, ignore_errors=True)


@pytest.fixture(scope="session")
def server(model_dir: Path, pytestconfig: pytest.Config) -> Iterator[Server]:
    srv = wait_healthy(pytestconfig.stash[_LAUNCHED])
    yield srv
    stop_server(srv)


@pytest.fixture(scope="session")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.v1, api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def admin(server: Server) -> httpx.Client:
    return httpx.Client(base_url=server.base_url + "/admin/v1", timeout=60,
                        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})


def wait_status(admin: httpx.Client, request_id: str, want: str, version: int | None = None,
                timeout: float = 120) -> dict:
    """The store's status, and for `active` also this server's own enforcement of that version (each process
    loads a newly active version on its next poll)."""
    deadline = time.monotonic() + timeout
    while True:
        body = admin.get(f"/unlearning-requests/{request_id}").json()
        enforced = want != "active" or (body["enforcement"]["state"] == "enforced"
                                        and body["enforcement"]["version"] == body["active_version"])
        if body["status"] == want and (version is None or body["active_version"] == version) and enforced:
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"{request_id} not {want} (v{version}) after {timeout}s: {body}")
        time.sleep(0.2)


@pytest.fixture(scope="session")
def tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def audit_until(admin: httpx.Client, actions: set[str], timeout: float = 10) -> list[dict]:
    """The audit log once it holds each of `actions` (rows are written in the background)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = admin.get("/audit", params={"limit": 500}).json()
        if actions <= {a["action"] for a in rows} or time.monotonic() > deadline:
            return rows
        time.sleep(0.1)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[LocalPostgres]:
    """A real PostgreSQL server for the session (a test may stop and start it: an outage); each test makes its
    own database (`fresh_database`)."""
    if postgres_bin() is None:
        pytest.skip("Debian's postgresql not installed (make test installs it where it can)")
    with local_postgres() as pg:
        yield pg


@pytest.fixture(scope="session")
def postgres(postgres_server: LocalPostgres) -> str:
    """The session PostgreSQL server's maintenance database URL."""
    return postgres_server.url
