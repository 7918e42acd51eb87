# The spindle service: `docker build -t spindle .`, or `docker compose up` (docker-compose.yml).
#
# No job runs in this container: each runs in a container of the host's engine (Docker, or Podman's
# Docker-compatible API), reached through its socket mounted here (SPINDLE_DOCKER_HOST; see
# docker-compose.yml).
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# git fetches repos and actions; mmdebstrap builds the runner image from Debian packages;
# nft installs the jobs' network policy (docs/execution.md) when the container may (compose below)
# (`spindle runner-image build`, which needs root and mounts: see docker-compose.yml).
RUN apt-get update \
    && apt-get install -y --no-install-recommends git ca-certificates mmdebstrap nftables \
    && rm -rf /var/lib/apt/lists/*

# An unprivileged user: the service itself needs no privilege; it reaches the engine's socket
# through the socket's group (group_add in docker-compose.yml).
RUN groupadd --system --gid 10001 spindle \
    && useradd --system --uid 10001 --gid spindle --home-dir /var/lib/spindle --shell /usr/sbin/nologin spindle \
    && install -d -o spindle -g spindle -m 0750 /var/lib/spindle

WORKDIR /srv/spindle

# Dependencies first, in a layer of their own, so that a code change does not reinstall them:
# exactly uv.lock, with the uv version scripts/setup pins.
ENV UV_PROJECT_ENVIRONMENT=/srv/spindle/.venv UV_PYTHON_DOWNLOADS=never UV_COMPILE_BYTECODE=0 \
    PATH=/srv/spindle/.venv/bin:$PATH
COPY pyproject.toml uv.lock ./
RUN pip install "uv==0.13.9" \
    && uv sync --frozen --no-install-project --no-cache

# The project itself, editable, so that app/__init__.py's PROJECT_ROOT (/srv/spindle) finds
# migrations/ and lexicons/.
COPY . .
RUN uv sync --frozen --no-cache \
    && spindle --help >/dev/null

USER spindle
ENV SPINDLE_DATA_DIR=/var/lib/spindle \
    SPINDLE_LISTEN=0.0.0.0:6555 \
    HOME=/var/lib/spindle
VOLUME ["/var/lib/spindle"]
EXPOSE 6555

# /healthz runs a query, so it fails while the database is unreachable.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('SPINDLE_LISTEN', '0.0.0.0:6555').rpartition(':')[2]; urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4)"]

CMD ["spindle", "serve"]
