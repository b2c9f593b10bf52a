# The pipeline's runtime image: worker, beat, Flower and the one-shot init (`python -m tasks
# init`) run from it. It carries requirements.txt and the runtime package only: no dev/
# (the development distribution: embedded stack, seed, bench), no tests, no development
# dependencies (.dockerignore keeps them out of the build context).
#
# Base image: a tag, not a digest. No digest of the current python:3.11-slim could be checked
# from where this file was written, and a stale digest would pin old, unpatched packages.
# For reproducible builds pin it at build time and refresh it with each rebuild:
#   docker buildx imagetools inspect python:3.11-slim --format '{{json .Manifest.Digest}}'
#   docker build --build-arg PYTHON_IMAGE=python:3.11-slim@sha256:<that digest> .
ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    STACK_DIR=/tmp

WORKDIR /app
# The runtime lock first (every dependency pinned, transitive ones too; a layer that
# changes only with requirements.txt).
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt

# Then the project itself without resolving again: requirements.txt already holds what
# pyproject.toml's ranges declare (tests/test_packaging.py).
# Processes run from /app, which holds the same files as the installed package: store.py
# reads init.sql beside the package. Compiled now, as the root filesystem is read-only later.
COPY pyproject.toml celeryconfig.py flowerconfig.py init.sql ./
COPY tasks/ tasks/
RUN pip install --no-cache-dir --no-deps . \
    && rm -rf build ./*.egg-info \
    && python -m compileall -q tasks celeryconfig.py flowerconfig.py

# A user and group of their own, by number, as the Kubernetes manifests run it
# (runAsUser/runAsGroup 10001, read-only root filesystem, /tmp an emptyDir).
RUN groupadd --system --gid 10001 pipeline \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin pipeline
USER 10001:10001

EXPOSE 5555
CMD ["celery", "-A", "tasks", "worker", "--loglevel=INFO", "-Q", "fetch,batches"]
