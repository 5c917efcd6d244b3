"""Every guard metric, defined once. Names follow Prometheus conventions (`_total` counters, base units).

Gauges are `livesum`/`liveall` in multiprocess mode so a dead process's value disappears with it.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80)
SCORE_BUCKETS = tuple(round(0.05 * i, 2) for i in range(1, 21))
MS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)

REQUESTS = Counter("guard_requests_total", "Generation requests by guard decision and client tenant",
                   ["decision", "endpoint", "tenant"])
CLASSIFIER_SCORE = Histogram("guard_classifier_score", "Best classifier similarity per request and policy",
                             ["policy"], buckets=SCORE_BUCKETS)
CLASSIFIER_SECONDS = Histogram("guard_classifier_duration_seconds", "Prompt classifier time per request",
                               buckets=MS_BUCKETS)
# Policies are labelled by their opaque id; target names appear only in guard_policy_info, and only where an
# operator opted in (GUARD_METRICS_TARGET_NAMES): /metrics must not publish what was forgotten.
POLICY_MATCHES = Counter("guard_policy_matches_total", "Requests a policy matched", ["policy"])
POLICY_INFO = Gauge("guard_policy_info", "1 per active policy, naming its target (opt-in)", ["policy", "target"],
                    multiprocess_mode="liveall")
POLICIES_FAILED = Gauge("guard_policies_failed_closed", "Active policies this process cannot load (it refuses what "
                        "they apply to)", multiprocess_mode="liveall")
AUTH_FAILURES = Counter("guard_auth_failures_total", "Requests refused for a missing or invalid credential",
                        ["surface"])
AUDIT_DROPPED = Counter("guard_audit_dropped_total", "Audit rows dropped because the write queue was full")
REFUSALS = Counter("guard_refusals_total", "Refused choices by reason", ["reason"])
LEAKS = Counter("guard_leaks_total", "Forgotten content found in generated text", ["policy", "kind"])
OUTPUT_ACTIONS = Counter("guard_output_actions_total", "Choices the output side ended (refuse) or resumed under "
                         "steered decoding (steer) at a leak", ["action"])
SHADOW = Counter("guard_shadow_total", "What shadow-mode policies would have done, enforcing nothing: steer or "
                 "refuse a prompt the classifier matched (side=prompt), or act on a leak (side=output)",
                 ["policy", "would", "side"])
ACTIVE_POLICIES = Gauge("guard_active_policies", "Policies this process enforces", multiprocess_mode="liveall")
COMPILE_SECONDS = Histogram("guard_compile_duration_seconds", "Policy compile time", ["stage"],
                            buckets=LATENCY_BUCKETS)
COMPILE_FAILURES = Counter("guard_compile_failures_total", "Policy compiles that failed")
LOAD_SECONDS = Histogram("guard_policy_load_duration_seconds", "Loading a policy version in the engine worker",
                         buckets=MS_BUCKETS + (0.5, 1, 2.5))
HEAP_TRIM_SECONDS = Histogram("guard_worker_heap_trim_seconds", "Handing the engine worker's freed heap back to the "
                              "OS (inside a step, every GUARD_WORKER_HEAP_TRIM_S)", buckets=MS_BUCKETS + (0.5, 1))
REQUEST_SECONDS = Histogram("guard_request_duration_seconds", "End-to-end request latency",
                            ["endpoint", "guarded"], buckets=LATENCY_BUCKETS)
TTFT_SECONDS = Histogram("guard_time_to_first_token_seconds", "Time to the first generated text",
                         ["endpoint", "guarded"], buckets=LATENCY_BUCKETS)
OUTPUT_TOKENS = Counter("guard_output_tokens_total", "Generated tokens", ["decision"])
TOKENS_PENALIZED = Counter("guard_tokens_penalized_total",
                           "Decoding steps on which a policy changed logits, by kind (token ban, semantic penalty)",
                           ["policy", "kind"])
PROVENANCE_VETOES = Counter("guard_provenance_vetoes_total", "Steps where a verbatim protected span was vetoed",
                            ["policy"])
LOAD_FAILURES = Counter("guard_policy_load_failures_total", "Policy versions the engine worker could not load")
FAILED_CLOSED = Counter("guard_rows_failed_closed_total", "Guarded rows ended because a policy could not load")
