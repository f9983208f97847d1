#!/opt/venv/bin/python
"""The S3 stand-in's minio-init job (docker/stack-test/compose.override.yaml): what compose.yaml's minio-init does with
`mc`, done with boto3 against moto's S3 API: wait for the store, create the buckets BUCKET_MLFLOW and BUCKET_DVC
(idempotent), with the root keys MINIO_ROOT_USER / MINIO_ROOT_PASSWORD. MinIO's service account (S3_ACCESS_KEY) has no
equivalent: moto accepts any key, so MLflow and DVC use S3_ACCESS_KEY / S3_SECRET_KEY unchanged. No key is printed."""

from __future__ import annotations

import os
import sys
import time

import boto3
from botocore.exceptions import ClientError, EndpointConnectionError


def main() -> int:
    endpoint = os.environ.get("S3_ENDPOINT_URL", "http://minio:9000")
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                      aws_access_key_id=os.environ["MINIO_ROOT_USER"],
                      aws_secret_access_key=os.environ["MINIO_ROOT_PASSWORD"])
    for attempt in range(60):
        try:
            s3.list_buckets()
            break
        except EndpointConnectionError:
            time.sleep(1)
    else:
        print(f"s3-init: no S3 store answers at {endpoint}", file=sys.stderr)
        return 1
    buckets = [os.environ["BUCKET_MLFLOW"], os.environ["BUCKET_DVC"]]
    for bucket in buckets:
        try:
            s3.create_bucket(Bucket=bucket)
        except ClientError as exc:
            if exc.response["Error"]["Code"] not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise
    present = {b["Name"] for b in s3.list_buckets()["Buckets"]}
    missing = [b for b in buckets if b not in present]
    if missing:
        print(f"s3-init: buckets {missing} are missing after creating them", file=sys.stderr)
        return 1
    print(f"buckets {buckets[0]} and {buckets[1]} ready (the S3 stand-in: any key is accepted, "
          "so there is no service account to create)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
