# Test stand-in for compose.yaml's `redis:7.4-bookworm` (docker/stack-test/compose.override.yaml), built from Debian
# packages where no registry can be reached: Debian bookworm's redis-server 7.0 (the same major version), laid out
# as the official image: the `redis` user, the data folder /data as the working directory (appendonly files land
# there), redis-server and redis-cli on PATH, `redis-server` as the default command. Not for production.
ARG BASE=trafficlip/base:bookworm
FROM ${BASE}

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8

# DL3008 (apt packages without versions), on purpose: the base fixes the release, Debian keeps one version of each.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends redis-server redis-tools \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /data \
    && chown redis:redis /data \
    && redis-server --version

WORKDIR /data
VOLUME /data
EXPOSE 6379
CMD ["redis-server"]
