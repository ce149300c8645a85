# syntax=docker/dockerfile:1
# livekit-exporter: the exporter (and `livekit-exporter demo`) in a small image.
#
#   docker build -t livekit-exporter .
#   docker run --rm -p 9784:9784 -e LIVEKIT_URL=https://my.livekit.example \
#       -e LIVEKIT_API_KEY=APIxxxx -e LIVEKIT_API_SECRET=... --read-only livekit-exporter
#
# Two stages: the first installs the package and its dependencies into a virtualenv (wheels only:
# no compiler is needed, and none reaches the final image); the second is a slim Python with that
# virtualenv, run as an unprivileged user, with nothing to write outside /tmp.
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/livekit-exporter
WORKDIR /src
COPY pyproject.toml README.md ./
COPY exporter/ exporter/
RUN /opt/livekit-exporter/bin/pip install --prefer-binary . \
    && /opt/livekit-exporter/bin/pip uninstall -y pip setuptools \
    && /opt/livekit-exporter/bin/python -m compileall -q /opt/livekit-exporter

FROM python:${PYTHON_VERSION}-slim-bookworm
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="livekit-exporter" \
      org.opencontainers.image.description="Prometheus exporter for LiveKit: server state, webhooks and the voice-agent call pipeline" \
      org.opencontainers.image.source="https://github.com/livekit-exporter/livekit-exporter" \
      org.opencontainers.image.documentation="https://github.com/livekit-exporter/livekit-exporter#readme" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"
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
# aiohttp stops on SIGTERM: it closes the listener, finishes the requests in flight, then exits 0.
STOPSIGNAL SIGTERM
# No curl in a slim image: the image's own Python asks /-/healthy. (With --web.config.file TLS or
# basic auth, or another --web.listen-address, override this in compose / rely on the chart's probes.)
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9784/-/healthy', timeout=4)"]
ENTRYPOINT ["livekit-exporter"]
CMD ["--web.listen-address=:9784"]
