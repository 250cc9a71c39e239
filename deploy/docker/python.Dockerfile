# Python 3.11 on Debian bookworm (its python3 package), built without a registry: the stand-in for
# python:3.11-slim that `make compose-smoke` passes to the Dockerfile as PYTHON_IMAGE.
#   docker build --network host -f deploy/docker/python.Dockerfile --build-arg BASE=twin-local/debian:bookworm \
#     -t twin-local/python:3.11-bookworm deploy/docker
ARG BASE=twin-local/debian:bookworm
FROM ${BASE}
ENV DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*
CMD ["python3"]
