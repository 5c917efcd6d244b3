"""Service configuration: every knob is a `GUARD_*` environment variable (pydantic-settings).

CLI flags of `guard-service serve` override the environment; nothing else reads os.environ directly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "guard-service"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GUARD_", env_file=None, extra="ignore")

    # HTTP
    host: str = "127.0.0.1"
    port: int = 8000

    # Model and engine
    cache_dir: Path = Field(default_factory=default_cache_dir)
    model: Path | None = Field(
        default=None, description="Local HF model folder; default: the embedded SmolLM2 prepared in cache_dir"
    )
    fixture: str | None = Field(
        default=None, description="serve an evaluation fixture (fixtures/<name>/ merged by `prepare-model --fixture`)"
    )
    served_model_name: str = "smollm2-135m-instruct"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="auto = float32 on CPU (fastest on AVX2), the model's dtype on CUDA"
    )
    max_model_len: int = 2048
    max_num_seqs: int = 64
    gpu_memory_utilization: float | None = Field(
        default=None, description="Fraction of device memory for the KV cache; default 0.9 on CUDA (on CPU, "
        "GUARD_KV_CACHE_BYTES unless this is set)"
    )
    kv_cache_bytes: int | None = Field(
        default=None, gt=0, description="the KV cache in bytes; default on CPU 1 GiB, plenty for the embedded "
        "model's context at the default batch, so that several replicas fit one box (a fraction of RAM does not: "
        "each would ask for half of it)")
    enforce_eager: bool = Field(default=False, description="Skip torch.compile: starts ~3x faster, ~7% slower")
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    distributed_executor_backend: Literal["mp", "ray"] | None = None
    seed: int = 0

    embedder_threads: int = Field(
        default=2, ge=1, description="ONNX Runtime threads of the prompt classifier's embedder (API process)")

    embedder_window_words: int = Field(
        default=48, ge=8, le=180, description="words per classifier view over long messages and conversations "
        "(MiniLM reads at most ~180 words); windows overlap by half")

    # Request limits
    max_request_bytes: int = Field(default=64 * 1024 * 1024, description="HTTP body cap, counted as it streams "
                                   "in (413 above)")
    max_prompts: int = Field(default=64, ge=1, description="prompts in one /v1/completions list (400 above)")
    max_choices: int = Field(default=128, ge=1, description="prompts x n in one request (400 above)")
    output_mode: Literal["hold", "release"] = Field(
        default="hold", description="while a policy acts on leaks: hold (release each delta once nothing in it can "
        "still become a leak; a client never receives one) or release (send at once, end the choice with "
        "content_filter at the first judged leak, report the characters checked)")
    output_holdback_chars: int = Field(
        default=240, ge=16, description="a sentence longer than this is judged at a word boundary, not at its end")
    max_lookup_chars: int = Field(default=200_000, ge=1, description="text of one provenance lookup (422 above)")

    # Policies: one store and one artifact location shared by every replica
    data_dir: Path = Field(default=Path("."), description="base for the relative paths below")
    store_url: str = Field(default="sqlite:///var/guard.sqlite3", description="the policy store every replica "
                           "shares; sqlite:///relative (to data_dir) or sqlite:////absolute path")
    store_busy_timeout_s: float = Field(default=10.0, gt=0, description="a write waits this long for the store's "
                                        "lock, then answers 503 with Retry-After")
    policies_dir: Path = Field(default=Path("policies"), description="compiled policy artifacts")
    indexes_dir: Path = Field(default=Path("indexes"), description="server-side corpora a request may name")
    max_document_bytes: int = Field(default=32 * 1024 * 1024, description="protected text per request (413)")
    refresh_interval_s: float = Field(default=0.5, description="how often the store is polled for changes")
    worker_heap_trim_s: float = Field(default=30.0, ge=0, description="how often the engine worker hands its freed "
                                      "heap back to the OS (glibc keeps it; 0: never)")
    compile_lease_s: float = Field(default=30.0, gt=0, description="a compile claim is a lease this long, "
                                   "renewed while it runs; one whose process died is taken over after it")
    drain_s: float = Field(default=30.0, ge=0, description="on SIGTERM: how long in-flight requests and streams "
                           "may run on before the process stops anyway (new connections are refused at once)")
    head_timeout_s: float = Field(default=15.0, gt=0, description="a request's line and headers must arrive "
                                  "within this of the connection opening or the request's first byte (slowloris)")
    keep_alive_s: float = Field(default=75.0, gt=0, description="an idle keep-alive connection is closed after "
                                "this; longer than clients' and load balancers' own idle timeouts (httpx and the "
                                "openai SDK 5 s, AWS ALB 60 s), so the client always closes first and never sends "
                                "a request on a connection the server is closing")
    max_collateral: float = Field(
        default=0.02, ge=0, le=1, description="a compiled version that would flag more than this share of the "
        "benign reference prompts (its impact preview) is held, not enforced, until an admin activates it with "
        "force (audited); 1 turns the check off")
    expand_max_tokens: int = Field(default=48, description="tokens per knowledge-expansion answer")

    metrics_dir: Path | None = Field(
        default=None, description="prometheus multiprocess dir (emptied at start); default: a fresh temp dir")

    # Auth: name -> token. Admin tokens may write; viewer tokens may only read the admin API.
    admin_tokens: dict[str, str] = Field(default_factory=dict)
    viewer_tokens: dict[str, str] = Field(default_factory=dict)
    api_keys: dict[str, str] = Field(
        default_factory=dict, description="client keys for /v1, tenant name -> key; empty = /v1 is open (warned)")

    # What a client may learn (see README "Security model")
    client_guard_detail: Literal["none", "action", "full"] = Field(
        default="action", description="guard object and x-guard-* headers for plain clients: none, the action "
        "and opaque policy ids, or full detail (targets, reasons, scores, leaks; for development only). "
        "Admin and viewer tokens in x-guard-detail always get full detail")
    metrics_auth: bool = Field(default=False, description="/metrics needs an admin or viewer bearer token")
    docs_auth: bool = Field(default=False, description="/docs, /redoc and /openapi.json need an admin or viewer "
                            "bearer token")
    metrics_target_names: bool = Field(
        default=False, description="export guard_policy_info{policy,target}: target names in metrics (opt-in)")
    audit_queue_size: int = Field(default=10_000, ge=100, description="audit rows waiting to be written")

    def path(self, p: Path) -> Path:
        return (p if p.is_absolute() else self.data_dir / p).resolve()

    def base_model_path(self) -> Path:
        return self.cache_dir / "models" / "SmolLM2-135M-Instruct"

    def resolved_model_path(self) -> Path:
        if self.model is not None:
            return self.model
        if self.fixture is not None:
            return self.cache_dir / "models" / f"SmolLM2-135M-Instruct-fixture-{self.fixture}"
        return self.base_model_path()
