"""The soak's one-minute version (`python -m bench.soak` runs ten): 32 clients, half streaming, against a server
of its own while policies are created, patched and revoked every few seconds. Nothing fails, no response ignores
a policy in force when it started, no process grows after warm-up (the engine worker trims its heap: see
guard_service/worker/heap.py), and the API process leaks no descriptors."""

from __future__ import annotations

from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bench.soak import soak
from tests.conftest import start_server, stop_server


def test_one_minute_soak_with_policy_churn(model_dir: Path, tmp_path: Path) -> None:
    server = start_server(tmp_path, {"GUARD_MAX_MODEL_LEN": "512"})
    try:
        report = soak(server, 60, clients=32, churn_s=3.0)
        families = {f.name: f for f in text_string_to_metric_families(httpx.get(server.base_url + "/metrics").text)}
    finally:
        code = stop_server(server)
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
    assert code == 0
