# syntax=docker/dockerfile:1
# livekit-exporter: the exporter (and `livekit-exporter demo`) in a small image.
#
#   docker build -t livekit-exporter .
#   docker run --rm -p 9784:9784 -e LIVEKIT_URL=https://my.livekit.example \
#       -e LIVEKIT_API_KEY=APIxxxx -e LIVEKIT_API_SECRET=... --read-only livekit-exporter
#
# Two stages: the first builds the package's wheel and installs it with its dependencies into a
# virtualenv, from wheels only (no compiler is needed, and none reaches the final image); the second
# is a slim Python with that virtualenv and without pip, run as an unprivileged user, with nothing
# to write outside /tmp.
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/livekit-exporter
WORKDIR /src
COPY pyproject.toml README.md ./
COPY exporter/ exporter/
RUN /opt/livekit-exporter/bin/pip wheel --no-deps --wheel-dir /wheels . \
    && /opt/livekit-exporter/bin/pip install --only-binary=:all: /wheels/livekit_exporter-*.whl \
    && /opt/livekit-exporter/bin/pip uninstall -y pip setuptools \
    && /opt/livekit-exporter/bin/python -m compileall -q /opt/livekit-exporter

FROM python:${PYTHON_VERSION}-slim-bookworm
# VERSION is livekit_exporter.__version__ (a test keeps them equal); REVISION the git commit:
#   docker build --build-arg REVISION=$(git rev-parse HEAD) -t livekit-exporter .
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="livekit-exporter" \
      org.opencontainers.image.description="Prometheus exporter for LiveKit: server state, webhooks and the voice-agent call pipeline" \
      org.opencontainers.image.source="https://github.com/livekit-exporter/livekit-exporter" \
      org.opencontainers.image.documentation="https://github.com/livekit-exporter/livekit-exporter#readme" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
# The base image's own pip, setuptools and wheel are not needed at run time.
RUN python -m pip uninstall -y -q pip setuptools wheel
# A fixed numeric user (Kubernetes' runAsNonRoot checks the number), no home, no shell login.
RUN groupadd --system --gid 10001 livekit-exporter \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin livekit-exporter
COPY --from=build /opt/livekit-exporter /opt/livekit-exporter
ENV PATH=/opt/livekit-exporter/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /tmp
EXPOSE 9784
# SIGTERM: aiohttp closes the listener, lets the requests in flight finish (compose gives it
# stop_grace_period: 30s), then exits 0; the demo exits 0 too.
STOPSIGNAL SIGTERM
# No curl in a slim image: the image's own Python asks /-/healthy, never through an HTTP_PROXY.
# (With --web.config.file TLS or basic auth, or another --web.listen-address, override this in
# compose; the Helm chart uses its own probes.)
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request as u; u.build_opener(u.ProxyHandler({})).open('http://127.0.0.1:9784/-/healthy', timeout=4)"]
ENTRYPOINT ["livekit-exporter"]
CMD ["--web.listen-address=:9784"]
