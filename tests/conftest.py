"""One real guard-service (real vLLM engine, embedded model) per test session, driven over HTTP."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

ROOT = Path(__file__).resolve().parents[1]
MODEL_NAME = "smollm2-135m-instruct"
ADMIN_TOKEN = "test-admin-token"
VIEWER_TOKEN = "test-viewer-token"
MAX_DOCUMENT_BYTES = 2_000_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    base_url: str
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen
    data_dir: Path

    @property
    def v1(self) -> str:
        return self.base_url + "/v1"

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


def start_server(workdir: Path, extra_env: dict[str, str] | None = None, timeout: float = 400,
                 data_dir: Path | None = None) -> Server:
    """`data_dir` holds the policy store and artifacts; pass the same one again to simulate a restart."""
    port = free_port()
    data_dir = data_dir or workdir / "data"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GUARD_HOST": "127.0.0.1", "GUARD_PORT": str(port),
           "GUARD_ENFORCE_EAGER": "1", "GUARD_SERVED_MODEL_NAME": MODEL_NAME, "GUARD_DATA_DIR": str(data_dir),
           "GUARD_ADMIN_TOKENS": f'{{"ops": "{ADMIN_TOKEN}"}}', "GUARD_VIEWER_TOKENS": f'{{"audit": "{VIEWER_TOKEN}"}}',
           "GUARD_MAX_DOCUMENT_BYTES": str(MAX_DOCUMENT_BYTES), **(extra_env or {})}
    log = workdir / f"server-{port}.log"
    proc = subprocess.Popen([sys.executable, "-m", "guard_service.cli", "serve"], cwd=ROOT, env=env,
                            stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(f"http://127.0.0.1:{port}", env, log, proc, data_dir)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{server.log_tail()}")
        try:
            if httpx.get(server.base_url + "/health", timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(1)
    stop_server(server)
    raise RuntimeError(f"server not healthy after {timeout}s:\n{server.log_tail()}")


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


def stop_server(server: Server) -> None:
    if server.proc.poll() is None:
        server.proc.terminate()
        try:
            server.proc.wait(60)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait()


@pytest.fixture(scope="session")
def model_dir() -> Path:
    from guard_service.config import Settings
    from guard_service.model_prep import prepare_model

    settings = Settings()
    return settings.model if settings.model else prepare_model(settings.resolved_model_path())


@pytest.fixture(scope="session")
def server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("server"))
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


def _postgres_bin() -> Path | None:
    """Debian's PostgreSQL server binaries (not on PATH: /usr/lib/postgresql/<major>/bin)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


@pytest.fixture(scope="session")
def postgres() -> Iterator[str]:
    """A real PostgreSQL server for the session, on a free port (initdb refuses root: run as `postgres`);
    yields the URL of its maintenance database. Each test makes its own database (`fresh_database`)."""
    bin_dir = _postgres_bin()
    if bin_dir is None:
        pytest.skip("Debian's postgresql not installed (make test installs it where it can)")
    import shutil
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="guard-postgres-"))  # pytest's own temp root is closed to other users
    data, port = root / "data", free_port()
    as_user: list[str] = []
    if os.geteuid() == 0:
        subprocess.run(["chown", "-R", "postgres", str(root)], check=True)
        as_user = ["runuser", "-u", "postgres", "--"]
    for step in ([str(bin_dir / "initdb"), "-D", str(data), "-U", "guard", "--auth=trust", "-E", "UTF8"],
                 [str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w", "-o",
                  f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c max_connections=200", "start"]):
        done = subprocess.run([*as_user, *step], capture_output=True, text=True)
        assert done.returncode == 0, f"{step[0]} failed: {done.stdout}{done.stderr}"
    try:
        yield f"postgresql://guard@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def fresh_database(postgres: str, name: str) -> str:
    """A new, empty database on the session's server; its URL."""
    import psycopg

    with psycopg.connect(postgres, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return postgres.rsplit("/", 1)[0] + "/" + name
