# Slipway's own image: web + worker (`python -m github_app serve`).
# It builds images through a Docker engine it does not contain: mount the
# host's socket (docker-compose.yml does) or set DOCKER_HOST.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DATA_DIR=/data \
    PORT=8080

# type: ami assembles a bootable disk with these, without loop devices or mounts
# (docs/ami.md); as the unprivileged `slipway` user too.
RUN apt-get update -q \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        fdisk dosfstools mtools e2fsprogs \
    && rm -rf /var/lib/apt/lists/*

# Only what the package needs: pyproject, its README and the two packages
# (.dockerignore keeps tests, benchmarks and .git out of the context).
COPY pyproject.toml README.md /tmp/slipway/
COPY builder /tmp/slipway/builder
COPY github_app /tmp/slipway/github_app
RUN pip install --no-cache-dir /tmp/slipway \
    && rm -rf /tmp/slipway

# Not root. The Docker socket belongs to root and the host's `docker` group,
# whose gid differs between machines: give it with `group_add` in compose or
# `docker run --group-add $(stat -c %g /var/run/docker.sock)`.
RUN useradd --system --uid 10001 --create-home --shell /usr/sbin/nologin slipway \
    && mkdir -p /data \
    && chown slipway:slipway /data
USER slipway
WORKDIR /home/slipway
VOLUME /data
EXPOSE 8080

# No curl in the image: ask /healthz (job store and Docker engine) with Python.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8080'), timeout=4)"]

CMD ["python", "-m", "github_app", "serve"]
