# syntax=docker/dockerfile:1
# One image for the serving sidecar and the monitor, non-root, read-only-root friendly.
#   CPU (default):  docker build -t repwatch .
#   GPU:            docker build --build-arg VARIANT=gpu \
#                     --build-arg BASE=<a CUDA 12 + cuDNN runtime image with Python 3.11> .
# VARIANT=gpu installs onnxruntime-gpu instead of onnxruntime (the `gpu` extra); the CUDA and
# cuDNN libraries it loads come from BASE. The sidecar logs its active execution providers:
# check for CUDAExecutionProvider, since onnxruntime-gpu falls back to the CPU silently.
# Both stages use the same BASE, so the virtualenv built in the first runs in the second.
ARG BASE=python:3.11.11-slim-bookworm

FROM ${BASE} AS build
ARG VARIANT=cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python3 -m venv /opt/repwatch
COPY pyproject.toml README.md ./
COPY detectors ./detectors
COPY serving ./serving
COPY monitor ./monitor
# serving = the sidecar and the monitor on onnxruntime (CPU); gpu = the same on onnxruntime-gpu.
RUN if [ "${VARIANT}" = "gpu" ]; then extra=gpu; else extra=serving; fi \
 && /opt/repwatch/bin/pip install --no-cache-dir ".[${extra}]" \
 && /opt/repwatch/bin/python -m compileall -q /opt/repwatch

FROM ${BASE}
ARG VARIANT=cpu
LABEL org.opencontainers.image.title="repwatch" \
      org.opencontainers.image.description="Drift and security monitoring for ML models (sidecar + monitor)" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.repwatch.variant="${VARIANT}"
RUN groupadd --system --gid 10001 repwatch \
 && useradd --system --uid 10001 --gid repwatch --home-dir /tmp --no-create-home repwatch \
 && mkdir -p /var/lib/repwatch/checkpoints \
 && chown 10001:10001 /var/lib/repwatch/checkpoints
COPY --from=build /opt/repwatch /opt/repwatch
ENV PATH=/opt/repwatch/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    REPWATCH_HEALTH_URL=http://127.0.0.1:8080/v2/health/live
USER 10001:10001
WORKDIR /tmp
# 8080: the sidecar (OIP + /metrics); 9108: a monitor worker's /metrics, /healthz, /readyz.
EXPOSE 8080 9108
# The sidecar's liveness by default; a monitor container sets
# REPWATCH_HEALTH_URL=http://127.0.0.1:9108/healthz.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request as r; r.urlopen(os.environ['REPWATCH_HEALTH_URL'], timeout=4)"]
# `repwatch serve --config /etc/repwatch/config.yaml` runs the sidecar;
# `repwatch monitor --config /etc/repwatch/config.yaml` runs a monitor worker.
ENTRYPOINT ["repwatch"]
CMD ["--help"]
