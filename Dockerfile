# syntax=docker/dockerfile:1
# One image for the sidecar and the monitor. CPU by default; GPU inference with
#   docker build --build-arg VARIANT=gpu --build-arg BASE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04 .
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE}

ARG VARIANT=serving
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN groupadd --system --gid 10001 repwatch \
 && useradd --system --uid 10001 --gid repwatch --home-dir /home/repwatch --create-home repwatch

WORKDIR /opt/repwatch
COPY pyproject.toml README.md ./
COPY detectors ./detectors
COPY serving ./serving
COPY monitor ./monitor
# VARIANT=serving installs onnxruntime (CPU); VARIANT=gpu installs onnxruntime-gpu instead.
RUN pip install --no-cache-dir ".[${VARIANT}]"

USER 10001:10001
WORKDIR /home/repwatch
EXPOSE 8080 9108
# `repwatch serve --config /etc/repwatch/config.yaml` runs the sidecar;
# `repwatch monitor --config /etc/repwatch/config.yaml` runs a monitor worker.
ENTRYPOINT ["repwatch"]
CMD ["--help"]
