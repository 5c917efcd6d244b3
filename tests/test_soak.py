"""The soak's one-minute version (`python -m bench.soak` runs ten): 32 clients, half streaming, against the
session's server (last in the session: conftest orders it so) while policies are created, patched and revoked
every few seconds. Nothing fails, no response ignores a policy in force when it started, no process grows after
warm-up (the engine worker trims its heap: see guard_service/worker/heap.py), and the API process leaks no
descriptors. Then the server is stopped the way a
rolling deploy stops it (SIGTERM with a stream and a request in flight): both finish, and it exits 0."""

from __future__ import annotations

import signal
import threading
import time

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bench.soak import soak
from tests.conftest import MODEL_NAME, Server

pytestmark = pytest.mark.ends_session_server
LONG = {"model": MODEL_NAME, "temperature": 0, "max_tokens": 200, "extra_body": {"ignore_eos": True},
        "messages": [{"role": "user", "content": "Tell me a long story about a lighthouse keeper."}]}


def test_one_minute_soak_with_policy_churn(server: Server) -> None:
    report = soak(server, 60, clients=32, churn_s=3.0)
    families = {f.name: f for f in text_string_to_metric_families(httpx.get(server.base_url + "/metrics").text)}
    summary = {k: report[k] for k in ("requests", "streams", "about_targets", "refused_about_enforced", "errors",
                                      "http_5xx", "violations", "churn_steps", "p99_s", "rss_growth_after_warmup",
                                      "fds_after_warmup_and_end")}
    print(summary)
    assert report["errors"] == 0 and report["http_5xx"] == 0, report["error_examples"]
    assert report["churn_errors"] == [] and report["churn_steps"] >= 8, report
    assert report["violations"] == 0, report["violation_examples"]
    assert report["refused_about_enforced"] > 0 and report["streams"] > 0
    assert all(growth < 0.05 for growth in report["rss_growth_after_warmup"].values()), summary
    trims = {s.name: s.value for s in families["guard_worker_heap_trim_seconds"].samples}
    assert trims["guard_worker_heap_trim_seconds_count"] >= 1, trims  # every GUARD_WORKER_HEAP_TRIM_S (30)
    api = next(k for k in report["rss_growth_after_warmup"] if k.split(":")[1] == str(server.proc.pid))
    before, after = report["fds_after_warmup_and_end"][api]
    assert after <= before + 8, summary


def _refused(server: Server) -> bool:
    try:
        return httpx.get(server.base_url + "/health", timeout=2).status_code != 200
    except httpx.TransportError:
        return True


def test_sigterm_drains_streams_and_requests_in_flight_then_exits_zero(server: Server) -> None:
    """(Moved here from test_faults, where it had a server of its own.)"""
    client = openai.OpenAI(base_url=server.v1, api_key="unused", max_retries=0, timeout=120)
    stream = iter(client.chat.completions.create(stream=True, **LONG))
    first = next(stream)
    plain: dict = {}
    thread = threading.Thread(target=lambda: plain.update(r=client.chat.completions.create(**LONG)))
    thread.start()
    time.sleep(0.5)  # the non-streaming request is in the engine too
    server.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    while not _refused(server) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _refused(server), "still ready after SIGTERM"
    chunks = [first, *stream]
    thread.join(120)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].choices[0].finish_reason == "length" and len(text) > 200, chunks[-1]
    assert plain["r"].choices[0].finish_reason == "length" and plain["r"].usage.completion_tokens == 200
    assert server.proc.wait(90) == 0, server.log_tail()
