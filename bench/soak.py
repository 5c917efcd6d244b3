"""A bounded soak: concurrent clients (half streaming) against a real server while an operator creates, patches
and revokes policies every few seconds; stops itself.

    python -m bench.soak [--minutes 10] [--clients 32] [--churn-s 3]

Recorded: every request's outcome and latency, errors and 5xx, p99 latency per window, the RSS and open file
descriptors of every process of the server (API, engine core, workers), and policy violations: a request about
the target of a policy that this server enforced from before the request was sent until it was answered must be
refused (it may also be refused when the policy came into force or was revoked while it ran, or by a newer
version). Targets: 0 errors, 0
violations, RSS growth < 5% after warm-up (the first quarter of the run).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from bench.common import percentile, print_table, write_json
from bench.processes import ADMIN_TOKEN, MODEL_NAME, Server, start_server, stop_server

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
TARGETS = ["Ada Lovelace", "Grace Hopper", "Alan Turing", "Marie Curie", "Nikola Tesla", "Rosalind Franklin"]
GENERAL = ["What is the boiling point of water at sea level?", "Name three primary colours.",
           "Write one sentence about the ocean.", "What is 12 times 7?", "Give me a synonym for happy."]


@dataclass
class Enforcement:
    """When this server enforced each target's policy: [from, until) intervals in wall time, as the churner saw
    them (from: the admin API reported it enforced; until: the DELETE was sent)."""

    intervals: dict[str, list[list[float]]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def begin(self, target: str, at: float) -> None:
        with self.lock:
            self.intervals.setdefault(target, []).append([at, float("inf")])

    def end(self, target: str, at: float) -> None:
        with self.lock:
            self.intervals[target][-1][1] = at

    def enforced(self, target: str, began: float, ended: float) -> bool:
        """In force from before the request was sent until after it was answered: it must have been refused. (A
        request in flight when its policy was revoked may reach the server after the revocation and pass.)"""
        with self.lock:
            return any(a <= began and ended < b for a, b in self.intervals.get(target, []))


@dataclass
class Outcome:
    started: float
    seconds: float
    status: int
    stream: bool
    target: str | None
    refused: bool
    error: str | None = None


def _request(http: httpx.Client, prompt: str, stream: bool) -> tuple[int, bool, str | None]:
    """(HTTP status, refused, error) of one chat request; a stream is read to its end."""
    body = {"model": MODEL_NAME, "max_tokens": 24, "temperature": 0, "stream": stream,
            "messages": [{"role": "user", "content": prompt}]}
    if not stream:
        r = http.post("/v1/chat/completions", json=body)
        if r.status_code != 200:
            return r.status_code, False, r.text[:200]
        return 200, r.json()["choices"][0]["finish_reason"] == "content_filter", None
    finish, error = None, None
    with http.stream("POST", "/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            return r.status_code, False, r.read().decode(errors="replace")[:200]
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                error = json.dumps(chunk["error"])[:200]
            for c in chunk.get("choices", []):
                finish = c.get("finish_reason") or finish
    if error is None and finish is None:
        error = "stream ended without a finish_reason"
    return 200, finish == "content_filter", error


def _client(server: Server, stop: threading.Event, seed: int, enforcement: Enforcement,
            out: list[Outcome]) -> None:
    rng = random.Random(seed)
    with httpx.Client(base_url=server.base_url, timeout=120) as http:
        while not stop.is_set():
            target = rng.choice(TARGETS) if rng.random() < 0.5 else None
            prompt = f"Who was {target} and what is she or he known for?" if target else rng.choice(GENERAL)
            stream = rng.random() < 0.5
            began, t0 = time.time(), time.perf_counter()
            try:
                status, refused, error = _request(http, prompt, stream)
            except httpx.HTTPError as exc:
                status, refused, error = 0, False, f"{type(exc).__name__}: {exc}"
            out.append(Outcome(began, time.perf_counter() - t0, status, stream, target, refused, error))


def _churn(server: Server, stop: threading.Event, every_s: float, enforcement: Enforcement,
           log: list[dict]) -> None:
    """Create a refuse policy for a target, wait until this server enforces it, patch it, revoke it later; up to
    three targets in force at a time."""
    rng = random.Random(7)
    live: list[tuple[str, str]] = []
    with httpx.Client(base_url=server.base_url + "/admin/v1", headers=ADMIN, timeout=120) as admin:
        while not stop.wait(every_s):
            free = [t for t in TARGETS if t not in {x[1] for x in live}]
            step = rng.choice(["create"] * 2 + ["patch"] * (len(live) > 0) + ["revoke"] * len(live))
            if step == "create" and free:
                target = rng.choice(free)
                r = admin.post("/unlearning-requests", json={"target": target, "action": "refuse",
                                                             "strength": {"expand_knowledge": False}})
                r.raise_for_status()
                request_id = r.json()["id"]
                while admin.get(f"/unlearning-requests/{request_id}").json()["enforcement"]["state"] != "enforced":
                    time.sleep(0.05)
                enforcement.begin(target, time.time())
                live.append((request_id, target))
            elif step == "patch" and live:
                request_id, target = rng.choice(live)
                admin.patch(f"/unlearning-requests/{request_id}",
                            json={"reason": f"soak patch {time.time():.0f}"}).raise_for_status()
            elif step == "revoke" and live:
                request_id, target = live.pop(rng.randrange(len(live)))
                enforcement.end(target, time.time())
                admin.delete(f"/unlearning-requests/{request_id}").raise_for_status()
            else:
                continue
            log.append({"at": time.time(), "step": step, "target": target})


def _processes(server: Server) -> list[psutil.Process]:
    root = psutil.Process(server.proc.pid)
    return [root, *root.children(recursive=True)]


def _sample(server: Server) -> dict:
    per = {}
    for p in _processes(server):
        with contextlib.suppress(psutil.Error):
            per[f"{p.name()}:{p.pid}"] = {"rss_mb": p.memory_info().rss / 2**20, "fds": p.num_fds()}
    return {"at": time.time(), "processes": per}


def soak(server: Server, seconds: float, clients: int = 32, churn_s: float = 3.0) -> dict:
    """Run the soak against a healthy server; the report (see `judge`)."""
    stop, enforcement = threading.Event(), Enforcement()
    outcomes: list[Outcome] = []
    churn_log: list[dict] = []
    samples = [_sample(server)]
    threads = [threading.Thread(target=_client, args=(server, stop, k, enforcement, outcomes), daemon=True)
               for k in range(clients)]
    errors: list[BaseException] = []

    def churner() -> None:
        try:
            _churn(server, stop, churn_s, enforcement, churn_log)
        except BaseException as exc:  # noqa: BLE001 - reported, and it fails the soak
            errors.append(exc)

    threads.append(threading.Thread(target=churner, daemon=True))
    began = time.time()
    for t in threads:
        t.start()
    while time.time() - began < seconds:
        time.sleep(min(5.0, max(0.1, seconds / 20)))
        samples.append(_sample(server))
    stop.set()
    for t in threads:
        t.join(180)
    samples.append(_sample(server))
    return judge(began, seconds, outcomes, samples, enforcement, churn_log, errors)


def judge(began: float, seconds: float, outcomes: list[Outcome], samples: list[dict], enforcement: Enforcement,
          churn_log: list[dict], errors: list[BaseException]) -> dict:
    violations = [o for o in outcomes if o.target and o.status == 200 and not o.refused
                  and enforcement.enforced(o.target, o.started, o.started + o.seconds)]
    failed = [o for o in outcomes if o.error is not None or o.status != 200]
    warm = began + seconds / 4
    windows = []
    step = max(5.0, seconds / 12)
    t = began
    while t < began + seconds:
        inside = [o for o in outcomes if t <= o.started < t + step]
        if inside:
            windows.append({"from_s": round(t - began, 1), "requests": len(inside),
                            "errors": sum(o.error is not None or o.status != 200 for o in inside),
                            "p99_s": percentile([o.seconds for o in inside], 0.99)})
        t += step

    def rss(sample: dict) -> dict[str, float]:
        return {k: v["rss_mb"] for k, v in sample["processes"].items()}

    after_warm = next((s for s in samples if s["at"] >= warm), samples[-1])
    growth = {k: (rss(samples[-1])[k] - v) / v for k, v in rss(after_warm).items() if k in rss(samples[-1])}
    fds = {k: (after_warm["processes"][k]["fds"], samples[-1]["processes"][k]["fds"])
           for k in after_warm["processes"] if k in samples[-1]["processes"]}
    return {"seconds": seconds, "requests": len(outcomes), "streams": sum(o.stream for o in outcomes),
            "about_targets": sum(o.target is not None for o in outcomes),
            "refused_about_enforced": sum(o.target is not None and o.refused for o in outcomes),
            "errors": len(failed), "http_5xx": sum(o.status >= 500 for o in outcomes),
            "error_examples": [o.error or str(o.status) for o in failed[:5]],
            "violations": len(violations), "violation_examples": [vars(o) for o in violations[:5]],
            "churn_steps": len(churn_log), "churn_errors": [repr(e) for e in errors],
            "p99_s": percentile([o.seconds for o in outcomes], 0.99) if outcomes else None,
            "windows": windows, "rss_growth_after_warmup": growth, "fds_after_warmup_and_end": fds,
            "samples": samples}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--churn-s", type=float, default=3.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-soak-") as tmp:
        server = start_server(Path(tmp), {"GUARD_MAX_MODEL_LEN": "512"})
        try:
            report = soak(server, args.minutes * 60, args.clients, args.churn_s)
        finally:
            code = stop_server(server)
    report["exit_code"] = code
    print_table(f"soak: {args.clients} clients, policy churn every {args.churn_s} s, {args.minutes} min",
                ["from (s)", "requests", "errors", "p99 (s)"],
                [[w["from_s"], w["requests"], w["errors"], w["p99_s"]] for w in report["windows"]])
    print_table("processes: RSS growth after warm-up, open fds (after warm-up -> end)", ["process", "RSS growth",
                "fds"], [[k, f"{v:+.1%}", "{} -> {}".format(*report["fds_after_warmup_and_end"].get(k, ("?", "?")))]
                         for k, v in report["rss_growth_after_warmup"].items()])
    print(f"\nrequests {report['requests']} (streams {report['streams']}), errors {report['errors']}, "
          f"5xx {report['http_5xx']}, violations {report['violations']} of {report['about_targets']} about targets, "
          f"churn steps {report['churn_steps']}, exit code {code}")
    write_json("soak", {"args": vars(args), **report})


if __name__ == "__main__":
    main()
