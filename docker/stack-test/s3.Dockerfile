# Test stand-in for compose.yaml's MinIO (`minio/minio`, services minio and minio-init), built where no registry can
# be reached and MinIO is not packaged: moto's S3 server (moto[server] from PyPI, the S3 store the project's system
# tests use), in a virtualenv on the project's local Debian base. Its entrypoint takes MinIO's command
# (`server /data --console-address :9001`) and serves the S3 API on port 9000 as MinIO does; `s3-init` is the
# minio-init job's equivalent (the buckets, with boto3). What differs from MinIO (docs/deploy.md, section 4):
# moto keeps the objects in memory (gone when the container stops: /data stays empty), accepts any access key
# (so the service account minio-init makes has no equivalent) and has no web console. Not for production.
ARG BASE=trafficlip/base:bookworm
FROM ${BASE}

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG MOTO_VERSION=5.2.6
ENV LANG=C.UTF-8 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH

# a build secret `ca_bundle` (a CA bundle) is trusted by pip during the build only (docker/engine.sh passes it)
RUN --mount=type=secret,id=ca_bundle \
    if [ -f /run/secrets/ca_bundle ]; then export PIP_CERT=/run/secrets/ca_bundle; fi \
    && python3 -m venv "$VIRTUAL_ENV" \
    && pip install --no-cache-dir "moto[server]==${MOTO_VERSION}" \
    && useradd --uid 10002 --gid 0 --no-create-home --home-dir /data s3 \
    && mkdir -p /data && chown s3:0 /data

COPY s3-entrypoint.sh /usr/local/bin/s3-entrypoint.sh
COPY s3-init.py /usr/local/bin/s3-init
USER 10002:0
WORKDIR /data
EXPOSE 9000
ENTRYPOINT ["/usr/local/bin/s3-entrypoint.sh"]
CMD ["server", "/data"]
