"""Two replicas on one real PostgreSQL: how fast a change on one is enforced by the other, and how fast a compile
whose replica died (kill -9) or was stopped (SIGTERM) is finished by the other.

    python -m bench.replicas [--patches 50] [--revocations 10] [--takeovers 3] [--lease 3]

Propagation is timed from the store's `activate` audit row (written by whichever replica compiled the version) to
the moment replica B's registry began enforcing that version (`enforcement.since`, B's own clock: the admin API
is polled every 10 ms, but no poll's latency is in the figure). Takeover is timed from the signal to the other
replica's claim and to its enforcement. Both replicas run on this box with their own artifact folders: only the
database is shared.
"""

from __future__ import annotations

import argparse
import os
import signal
import tempfile
import time
from pathlib import Path

import httpx
import psycopg

from bench.common import median, percentile, print_table, write_json
from bench.processes import (
    ADMIN_TOKEN,
    Server,
    fresh_database,
    local_postgres,
    restart_server,
    start_servers,
    stop_server,
)

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def _detail(server: Server, request_id: str) -> dict:
    return httpx.get(f"{server.base_url}/admin/v1/unlearning-requests/{request_id}", headers=ADMIN, timeout=30).json()


def _enforced_at(server: Server, request_id: str, version: int | None, timeout: float = 120) -> float:
    """Wall time at which `server` enforces `version` (None: enforces nothing of the request)."""
    want = {"state": "not_enforced"} if version is None else {"state": "enforced", "version": version}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = _detail(server, request_id)["enforcement"]
        if all(state.get(k) == v for k, v in want.items()):
            return state["since"] if version is not None else time.time()  # by the server's clock, no poll
        time.sleep(0.01)
    raise RuntimeError(f"{request_id}: {want} not reached on {server.base_url}")


def _create(server: Server, target: str, expand: bool = False, description: str | None = None) -> str:
    body: dict = {"target": target, "action": "refuse"}
    if expand:
        body.update(kind="entity", description=description)
    else:
        body["strength"] = {"expand_knowledge": False}
    r = httpx.post(f"{server.base_url}/admin/v1/unlearning-requests", headers=ADMIN, json=body, timeout=60)
    r.raise_for_status()
    return r.json()["id"]


def _activated_at(db: psycopg.Connection, request_id: str, version: int) -> float:
    row = db.execute("SELECT at FROM audit WHERE request_id = %s AND version = %s AND action = 'activate'",
                     (request_id, version)).fetchone()
    return float(row[0])


def propagation(a: Server, b: Server, db: psycopg.Connection, patches: int) -> dict:
    request_id = _create(a, "Ada Lovelace")
    _enforced_at(b, request_id, 1)
    push, end_to_end = [], []
    for version in range(2, patches + 2):
        sent = time.time()
        r = httpx.patch(f"{a.base_url}/admin/v1/unlearning-requests/{request_id}", headers=ADMIN, timeout=60,
                        json={"aliases": [f"Augusta Ada King {version}"]})
        r.raise_for_status()
        seen = _enforced_at(b, request_id, version)
        push.append(seen - _activated_at(db, request_id, version))
        end_to_end.append(seen - sent)
    httpx.delete(f"{a.base_url}/admin/v1/unlearning-requests/{request_id}", headers=ADMIN, timeout=60)
    return {"push_s": push, "patch_to_enforced_s": end_to_end}


def revocation(a: Server, b: Server, n: int) -> list[float]:
    delays = []
    for k in range(n):
        request_id = _create(a, f"Grace Hopper {k}")
        _enforced_at(b, request_id, 1)
        sent = time.time()
        httpx.delete(f"{a.base_url}/admin/v1/unlearning-requests/{request_id}", headers=ADMIN,
                     timeout=60).raise_for_status()
        delays.append(_enforced_at(b, request_id, None) - sent)
    return delays


def takeover(servers: list[Server], db: psycopg.Connection, how: signal.Signals, k: int, workdir: Path) -> dict:
    """Signal the replica compiling an expansion version; the other's claim and enforcement, from the signal.
    The stopped replica is started again (same data folder) so the next round has two."""
    request_id = _create(servers[0], f"Katherine Johnson {how.name} {k}", expand=True,
                         description="A NASA mathematician who computed orbital trajectories.")
    deadline = time.monotonic() + 120
    row = None
    while row is None and time.monotonic() < deadline:
        row = db.execute("SELECT claimed_by FROM versions WHERE request_id = %s AND version = 2 "
                         "AND status = 'compiling'", (request_id,)).fetchone()
        time.sleep(0.01)
    if row is None:
        raise RuntimeError("the expansion version was never seen compiling")
    holder = next(s for s in servers if row[0].endswith(f":{s.proc.pid}"))
    survivor = next(s for s in servers if s is not holder)
    if how is signal.SIGKILL:
        os.killpg(holder.proc.pid, signal.SIGKILL)  # the API process and its engine
    else:
        holder.proc.send_signal(how)
    sent, sent_at = time.monotonic(), time.time()
    claimed = None
    while time.monotonic() - sent < 120:
        status, by = db.execute("SELECT status, claimed_by FROM versions WHERE request_id = %s AND version = 2",
                                (request_id,)).fetchone()
        if claimed is None and status in ("compiling", "active") and by != row[0]:
            claimed = time.monotonic() - sent
        if status in ("active", "failed"):
            break
        time.sleep(0.01)
    if status != "active":
        raise RuntimeError(f"{request_id} v2 ended {status} after {how.name}")
    enforced = time.monotonic() - sent
    _enforced_at(survivor, request_id, 2)
    code = holder.proc.wait(120)
    released = db.execute("SELECT at FROM audit WHERE request_id = %s AND version = 2 AND action = "
                          "'compile-released'", (request_id,)).fetchone()
    servers[servers.index(holder)] = restart_server(holder, workdir)
    return {"signal": how.name, "claimed_s": claimed, "enforced_s": enforced, "exit_code": code,
            "released_s": None if released is None else float(released[0]) - sent_at,
            "holder_log_tail": holder.log_tail(40) if how is signal.SIGTERM else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patches", type=int, default=50)
    parser.add_argument("--revocations", type=int, default=10)
    parser.add_argument("--takeovers", type=int, default=3, help="rounds of kill -9 and of SIGTERM each")
    parser.add_argument("--lease", type=float, default=3.0, help="GUARD_COMPILE_LEASE_S of both replicas")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-replicas-") as tmp, local_postgres() as pg:
        root = Path(tmp)
        env = {"GUARD_STORE_URL": fresh_database(pg.url, "bench_replicas"), "GUARD_MAX_MODEL_LEN": "512",
               "GUARD_COMPILE_LEASE_S": str(args.lease)}
        for name in ("a", "b"):
            (root / name).mkdir()
        servers = start_servers([root / "a", root / "b"], env)
        try:
            with psycopg.connect(env["GUARD_STORE_URL"], autocommit=True) as db:
                prop = propagation(servers[0], servers[1], db, args.patches)
                revoked = revocation(servers[0], servers[1], args.revocations)
                rounds = [takeover(servers, db, how, k, root)
                          for k in range(args.takeovers) for how in (signal.SIGKILL, signal.SIGTERM)]
        finally:
            for s in servers:
                stop_server(s)

    def row(name: str, xs: list[float]) -> list:
        return [name, len(xs), median(xs), percentile(xs, 0.99), max(xs)]

    rows = [row("activate -> enforced on B (push)", prop["push_s"]),
            row("PATCH on A -> enforced on B (incl. compile)", prop["patch_to_enforced_s"]),
            row("DELETE on A -> B stops", revoked)]
    for how in ("SIGKILL", "SIGTERM"):
        picked = [r for r in rounds if r["signal"] == how]
        if picked:
            rows.append(row(f"{how} compiling replica -> claimed by B", [r["claimed_s"] for r in picked]))
            rows.append(row(f"{how} compiling replica -> enforced by B", [r["enforced_s"] for r in picked]))
    print_table(f"Two replicas on one PostgreSQL (lease {args.lease} s), seconds", ["", "n", "p50", "p99", "max"],
                rows)
    print("SIGTERM'd replicas: exit codes", [r["exit_code"] for r in rounds if r["signal"] == "SIGTERM"],
          "claims given back after (s)", [r["released_s"] for r in rounds if r["signal"] == "SIGTERM"])
    write_json("replicas", {"args": vars(args), "propagation": prop, "revocation_s": revoked, "takeover": rounds,
                            "table": [dict(zip(["what", "n", "p50_s", "p99_s", "max_s"], r, strict=True))
                                      for r in rows]})


if __name__ == "__main__":
    main()
