# One image for every chainlab node (and for the genesis step of docker-compose.yml).
#
#   docker build -t chainlab:local .                                   # on python:3.12-slim
#   docker build --build-arg BASE_IMAGE=chainlab-base:local -t chainlab:local .
#
# The second form is for machines that cannot pull from a registry: scripts/docker-base.sh
# makes chainlab-base:local with ../shared/docker/make-base.sh, a Debian root filesystem
# whose /opt/venv already holds chainlab's dependencies, so this build needs no network.
# On python:3.12-slim, /opt/venv is created here and the dependencies come from the index.
ARG BASE_IMAGE=python:3.12-slim
FROM ${BASE_IMAGE}

ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 \
    PYTHONUNBUFFERED=1

# Only pyproject.toml, README.md and the four packages (.dockerignore keeps out the rest).
COPY . /src/
# One RUN (each step costs a layer commit):
# 1. The user the node runs as. /data is where docker-compose.yml mounts each node's
#    volume: a new named volume takes the owner of the directory it is mounted on, so
#    the node can write there without root.
# 2. chainlab into /opt/venv: offline when the base's /opt/venv already holds every
#    dependency and the build backend (--no-index resolves the dependencies against what
#    is installed and fails if one is missing); otherwise create /opt/venv if needed and
#    install from the package index (python:3.12-slim).
RUN set -eu; \
    if command -v useradd >/dev/null; then \
        useradd --uid 10001 --user-group --create-home --home-dir /home/chainlab \
                --shell /usr/sbin/nologin chainlab; \
    else \
        echo 'chainlab:x:10001:10001::/home/chainlab:/usr/sbin/nologin' >> /etc/passwd; \
        echo 'chainlab:x:10001:' >> /etc/group; \
        mkdir -p /home/chainlab; chown 10001:10001 /home/chainlab; \
    fi; \
    mkdir -p /data; chown chainlab:chainlab /data; \
    [ -x /opt/venv/bin/python ] || python3 -m venv /opt/venv; \
    cd /src; \
    if /opt/venv/bin/python -c 'import setuptools' 2>/dev/null && \
       /opt/venv/bin/pip install --disable-pip-version-check --no-cache-dir --no-index --no-build-isolation -q .; \
    then echo "chainlab installed offline into the base's /opt/venv"; \
    else echo "installing chainlab and its dependencies from the package index"; \
         /opt/venv/bin/pip install --disable-pip-version-check --no-cache-dir -q .; \
    fi; \
    /opt/venv/bin/pip check; \
    cd /; rm -rf /src; \
    chainlab --help >/dev/null

USER chainlab
WORKDIR /data
# 8545 JSON-RPC, 30303 P2P (the ports of homes made with `chainlab genesis --same-ports`).
EXPOSE 8545 30303
# Healthy when the node's GET /health answers 200 (it answers 503 while starting).
# Python rather than curl: the base may have no curl.
HEALTHCHECK --interval=5s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('CHAINLAB_RPC_PORT', '8545'), timeout=2)"]
ENTRYPOINT ["chainlab"]
CMD ["--help"]
