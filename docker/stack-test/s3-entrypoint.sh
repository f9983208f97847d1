#!/usr/bin/env bash
# The S3 stand-in's entrypoint (s3.Dockerfile): MinIO's `server DIR [--console-address ADDR] [--address ADDR]` ->
# moto's S3 server on MinIO's S3 port (9000, or --address's port); anything else is run as given.
set -euo pipefail
if [[ ${1:-} != server ]]; then exec "$@"; fi
shift
port=9000
while [[ $# -gt 0 ]]; do
  case $1 in
    --address) port=${2##*:}; shift 2 ;;
    --console-address) echo "s3 stand-in: no web console (moto has none); ignoring --console-address $2"; shift 2 ;;
    *) shift ;;       # the data folder: moto keeps objects in memory
  esac
done
echo "s3 stand-in: moto $(python -c 'import moto; print(moto.__version__)') serving S3 on port $port"
exec moto_server -H 0.0.0.0 -p "$port"
