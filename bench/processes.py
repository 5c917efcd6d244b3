"""Real guard-service servers and a real PostgreSQL as child processes, for the tests and for the benchmarks that
need more than one process (replicas, soak, faults): one owner of how they are started and stopped."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.common import free_port

ROOT = Path(__file__).resolve().parents[1]
MODEL_NAME = "smollm2-135m-instruct"
ADMIN_TOKEN = "test-admin-token"
VIEWER_TOKEN = "test-viewer-token"
MAX_DOCUMENT_BYTES = 2_000_000


@dataclass
class Server:
    base_url: str
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen
    data_dir: Path
    extra_env: dict[str, str]

    @property
    def v1(self) -> str:
        return self.base_url + "/v1"

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


def launch_server(workdir: Path, extra_env: dict[str, str] | None = None, data_dir: Path | None = None) -> Server:
    """Start `guard-service serve` and return at once (not yet healthy: `wait_healthy`)."""
    port = free_port()
    data_dir = data_dir or workdir / "data"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GUARD_HOST": "127.0.0.1", "GUARD_PORT": str(port),
           "GUARD_ENFORCE_EAGER": "1", "GUARD_SERVED_MODEL_NAME": MODEL_NAME, "GUARD_DATA_DIR": str(data_dir),
           "GUARD_ADMIN_TOKENS": f'{{"ops": "{ADMIN_TOKEN}"}}', "GUARD_VIEWER_TOKENS": f'{{"audit": "{VIEWER_TOKEN}"}}',
           "GUARD_MAX_DOCUMENT_BYTES": str(MAX_DOCUMENT_BYTES), **(extra_env or {})}
    log = workdir / f"server-{port}.log"
    proc = subprocess.Popen([sys.executable, "-m", "guard_service.cli", "serve"], cwd=ROOT, env=env,
                            stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    return Server(f"http://127.0.0.1:{port}", env, log, proc, data_dir, dict(extra_env or {}))


def wait_healthy(server: Server, timeout: float = 400) -> Server:
    """Until it serves and its compiler is warm (a replica that must compile first pays for no cache)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"server exited with {server.proc.returncode}:\n{server.log_tail()}")
        with contextlib.suppress(httpx.TransportError):
            health = httpx.get(server.base_url + "/health", timeout=2)
            if health.status_code == 200 and health.json().get("compiler") == "ready":
                return server
        time.sleep(0.5)
    stop_server(server)
    raise RuntimeError(f"server not healthy after {timeout}s:\n{server.log_tail()}")


def start_server(workdir: Path, extra_env: dict[str, str] | None = None, timeout: float = 400,
                 data_dir: Path | None = None) -> Server:
    """`data_dir` holds the policy store and artifacts; pass the same one again to simulate a restart."""
    return wait_healthy(launch_server(workdir, extra_env, data_dir), timeout)


def restart_server(server: Server, workdir: Path) -> Server:
    """A new process in place of a stopped one: the same settings, store and data folder, a new port."""
    return start_server(workdir, server.extra_env, data_dir=server.data_dir)


def core_shares(count: int) -> list[dict[str, str]]:
    """On a CPU host, each of `count` servers' engine its own cores (`VLLM_CPU_OMP_THREADS_BIND`). vLLM's
    default ("auto") binds every engine on a box to the same cores, from the moment its worker imports torch:
    two replicas loading side by side took 81 s here, their workers' imports serialised on one core, and
    would then share that core for every forward pass."""
    if "VLLM_CPU_OMP_THREADS_BIND" in os.environ or count < 2:
        return [{} for _ in range(count)]
    from guard_service.device import has_cuda

    if has_cuda():
        return [{} for _ in range(count)]
    cores = sorted(os.sched_getaffinity(0))
    size = max(1, len(cores) // count)
    shares = [cores[(k * size) % len(cores):][:size] for k in range(count)]
    return [{"VLLM_CPU_OMP_THREADS_BIND": ",".join(map(str, share))} for share in shares]


def start_servers(workdirs: list[Path], extra_env: dict[str, str] | None = None) -> list[Server]:
    """Several servers starting at once (their engines load side by side, each on its own cores: `core_shares`);
    all healthy, or none left running."""
    servers = [launch_server(w, {**(extra_env or {}), **share})
               for w, share in zip(workdirs, core_shares(len(workdirs)), strict=True)]
    try:
        return [wait_healthy(s) for s in servers]
    except BaseException:
        stop_servers(servers)
        raise


def stop_server(server: Server) -> int:
    """SIGTERM (a graceful drain), SIGKILL after a minute; the exit status."""
    return stop_servers([server])[0]


def stop_servers(servers: list[Server]) -> list[int]:
    """`stop_server` for several at once (each takes seconds to wind its engine down); their exit statuses."""
    for server in servers:
        if server.proc.poll() is None:
            server.proc.terminate()
    for server in servers:
        try:
            server.proc.wait(60)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait()
    return [server.proc.returncode for server in servers]


def postgres_bin() -> Path | None:
    """Debian's PostgreSQL server binaries (not on PATH: /usr/lib/postgresql/<major>/bin)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


@dataclass
class LocalPostgres:
    """A throwaway PostgreSQL server: `url` of its maintenance database; `stop()` and `start()` it again (an
    outage) keeping its data."""

    url: str
    data: Path
    root: Path
    port: int
    as_user: list[str]
    bin_dir: Path

    def start(self) -> None:
        self._ctl("-l", str(self.root / "log"), "-w", "-o", f"-p {self.port} -k {self.root} "
                  "-c listen_addresses=127.0.0.1 -c max_connections=200", "start")

    def stop(self) -> None:
        self._ctl("-m", "fast", "stop")

    def _ctl(self, *args: str) -> None:
        done = subprocess.run([*self.as_user, str(self.bin_dir / "pg_ctl"), "-D", str(self.data), *args],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"pg_ctl {args[-1]} failed: {done.stdout}{done.stderr}")


@contextlib.contextmanager
def local_postgres() -> Iterator[LocalPostgres]:
    """A throwaway PostgreSQL server on a free port (initdb refuses root: run as `postgres`)."""
    bin_dir = postgres_bin()
    if bin_dir is None:
        raise FileNotFoundError("Debian's postgresql is not installed (make test installs it where it can)")
    root = Path(tempfile.mkdtemp(prefix="guard-postgres-"))  # pytest's own temp root is closed to other users
    port = free_port()
    as_user: list[str] = []
    if os.geteuid() == 0:
        subprocess.run(["chown", "-R", "postgres", str(root)], check=True)
        as_user = ["runuser", "-u", "postgres", "--"]
    pg = LocalPostgres(f"postgresql://guard@127.0.0.1:{port}/postgres", root / "data", root, port, as_user, bin_dir)
    try:
        done = subprocess.run([*as_user, str(bin_dir / "initdb"), "-D", str(pg.data), "-U", "guard", "--auth=trust",
                               "-E", "UTF8"], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed: {done.stdout}{done.stderr}")
        pg.start()
        yield pg
    finally:
        with contextlib.suppress(RuntimeError):
            pg.stop()
        shutil.rmtree(root, ignore_errors=True)


def fresh_database(postgres: str, name: str) -> str:
    """A new, empty database on that server; its URL."""
    import psycopg

    with psycopg.connect(postgres, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return postgres.rsplit("/", 1)[0] + "/" + name
