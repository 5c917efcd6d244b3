"""Metrics: counters move with real traffic (including counts made inside vLLM's worker process), the shipped
Prometheus files pass promtool, and a real Prometheus scraping the server answers every dashboard query."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ADMIN_TOKEN, MODEL_NAME, ROOT, Server, free_port, wait_status

DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "guard-service.json"
BYPASS = {"x-guard-bypass": ADMIN_TOKEN}
needs_prometheus = pytest.mark.skipif(shutil.which("promtool") is None, reason="Debian's prometheus not installed")


def scrape(server: Server) -> dict[tuple[str, tuple], float]:
    text = httpx.get(server.base_url + "/metrics").text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def total(samples: dict, name: str, **labels: str) -> float:
    return sum(v for (n, lbl), v in samples.items()
               if n == name and all(dict(lbl).get(k) == want for k, want in labels.items()))


def dashboard_exprs() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [t["expr"] for p in panels for t in p["targets"]]


def traffic(client: openai.OpenAI, admin: httpx.Client) -> dict[str, str]:
    """One refusal, one steered answer, one unguarded leak, one copy attempt the provenance veto stops, one
    prompt a shadow-mode policy would have refused."""
    hp = admin.post("/unlearning-requests", json={
        "target": "Harry Potter", "aliases": ["J.K. Rowling", "Hogwarts"],
        "strength": {"expand_knowledge": False, "refuse_threshold": 0.99}}).json()["id"]
    text = ("Greek Prime Minister Kyriakos Mitsotakis has asked for forgiveness from the families of the 57 victims "
            "of this week's train crash, saying two trains heading in different directions cannot run on the same "
            "line and no-one notice.")
    doc = admin.post("/unlearning-requests", json={
        "target": "Train crash report", "kind": "document", "protected_documents": [text],
        "strength": {"expand_knowledge": False}}).json()["id"]
    shadow = admin.post("/unlearning-requests", json={
        "target": "Eiffel Tower", "action": "refuse", "mode": "shadow",
        "strength": {"expand_knowledge": False}}).json()["id"]
    wait_status(admin, hp, "active")
    wait_status(admin, doc, "active")
    wait_status(admin, shadow, "active")

    def chat(prompt: str, headers: dict | None = None) -> None:
        client.chat.completions.create(model=MODEL_NAME, temperature=0, max_tokens=40, extra_headers=headers or {},
                                       messages=[{"role": "user", "content": prompt}])

    chat("Who wrote Harry Potter?")  # refused
    chat("Write a short biography of the author of the Harry Potter series.")  # steered
    chat("Who wrote Harry Potter?", BYPASS)  # unguarded: the leak detector counts "Rowling"
    chat(f"Repeat the following text word for word.\n\n{text}")  # provenance veto
    chat("What is the capital of France?")
    chat("How tall is the Eiffel Tower?")  # passes: the shadow policy only counts it
    return {"hp": hp, "doc": doc, "shadow": shadow}


def test_counters_move_with_traffic(server: Server, client: openai.OpenAI, admin: httpx.Client) -> None:
    before = scrape(server)
    ids = traffic(client, admin)
    after = scrape(server)

    def delta(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    try:
        assert delta("guard_leaks_total", policy=ids["hp"], kind="lexical") >= 1
        assert delta("guard_refusals_total", reason="classifier") >= 1
        assert delta("guard_requests_total", decision="refuse") >= 1
        assert delta("guard_requests_total", decision="steer") >= 1
        assert delta("guard_policy_matches_total", policy=ids["hp"]) >= 2
        # counted inside vLLM's worker process, aggregated by /metrics of the API process:
        assert delta("guard_tokens_penalized_total", policy=ids["hp"], kind="semantic") >= 1
        assert delta("guard_provenance_vetoes_total", policy=ids["doc"]) >= 1
        assert delta("guard_shadow_total", policy=ids["shadow"], would="refuse", side="prompt") >= 1
        assert delta("guard_policy_matches_total", policy=ids["shadow"]) == 0
        assert delta("guard_policy_load_duration_seconds_count") >= 1
        assert delta("guard_compile_duration_seconds_count", stage="total") >= 2
        assert total(after, "guard_active_policies") >= 2
        assert delta("guard_request_duration_seconds_count", endpoint="chat") >= 5
        assert any(n == "vllm:num_requests_running" for n, _ in after)
        assert any(n == "vllm:kv_cache_usage_perc" for n, _ in after)
    finally:
        for request_id in ids.values():
            admin.delete(f"/unlearning-requests/{request_id}")


@needs_prometheus
def test_promtool_accepts_shipped_files() -> None:
    for args in (["check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")],
                 ["check", "rules", str(DEPLOY / "prometheus" / "alerts.yml")]):
        result = subprocess.run(["promtool", *args], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_references_only_existing_metrics(server: Server) -> None:
    exposed = {fam.name for fam in text_string_to_metric_families(httpx.get(server.base_url + "/metrics").text)}
    exposed |= {f"{n}_bucket" for n in exposed} | {f"{n}_total" for n in exposed}
    for expr in dashboard_exprs():
        for metric in re.findall(r"\b((?:guard_|vllm:)[a-z_:]+)", expr):
            assert metric in exposed, (metric, expr)


@needs_prometheus
def test_real_prometheus_scrapes_and_every_panel_has_data(server: Server, client: openai.OpenAI,
                                                          admin: httpx.Client, tmp_path: Path) -> None:
    port = free_port()
    target = server.base_url.removeprefix("http://")
    config = tmp_path / "prometheus.yml"
    shutil.copy(DEPLOY / "prometheus" / "alerts.yml", tmp_path / "alerts.yml")
    config.write_text((DEPLOY / "prometheus" / "prometheus.yml").read_text()
                      .replace('"guard-a:8000", "guard-b:8000"', f'"{target}"')
                      .replace("scrape_interval: 5s", "scrape_interval: 1s"))
    proc = subprocess.Popen(["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{port}"], stdout=subprocess.DEVNULL,
                            stderr=(tmp_path / "prometheus.log").open("w"))
    api = f"http://127.0.0.1:{port}/api/v1"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                targets = httpx.get(f"{api}/targets").json()["data"]["activeTargets"]
                if targets and targets[0]["health"] == "up":
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        else:
            raise AssertionError((tmp_path / "prometheus.log").read_text()[-2000:])
        time.sleep(3)
        ids = traffic(client, admin)  # counters move while Prometheus watches, so rates are non-zero
        time.sleep(4)
        empty = []
        for expr in dashboard_exprs():
            result = httpx.get(f"{api}/query", params={"query": expr}).json()
            assert result["status"] == "success", (expr, result)
            if not result["data"]["result"]:
                empty.append(expr)
        assert not empty, empty
        for request_id in ids.values():
            admin.delete(f"/unlearning-requests/{request_id}")
    finally:
        proc.terminate()
        proc.wait(30)
