"""The machine's PostgreSQL (127.0.0.1:5432) and Redis (127.0.0.1:6379) for the service tests: a fresh
database each, dropped or flushed after. Not running is a failure (naming the service), never a skip."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

PG_HOST, PG_PORT, PG_USER = "127.0.0.1", 5432, "postgres"
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379


def postgres_address(database: str) -> str:
    """user@host:port/database of a database on the machine's PostgreSQL (no password: trust auth)."""
    return f"{PG_USER}@{PG_HOST}:{PG_PORT}/{database}"


def postgres_uri(database: str, scheme: str = "postgresql") -> str:
    return f"{scheme}://{postgres_address(database)}"


@contextmanager
def postgres_databases(prefix: str, count: int = 1) -> Iterator[list[str]]:
    """``count`` fresh PostgreSQL databases (names starting with ``prefix``), dropped after, connections and all."""
    import psycopg  # a dev dependency (pyproject)
    try:
        admin = psycopg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres", autocommit=True)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not running at {PG_HOST}:{PG_PORT}: {exc}")
    suffix = secrets.token_hex(4)
    names = [f"{prefix}_{suffix}" + (f"_{i}" if i else "") for i in range(count)]
    with admin:
        created = []
        try:
            for name in names:
                admin.execute(f"CREATE DATABASE {name}")
                created.append(name)
            yield names
        finally:
            for name in created:
                admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def postgres_rows(database: str, sql: str, *args) -> list[tuple]:
    import psycopg
    with psycopg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=database) as connection:
        return connection.execute(sql, args).fetchall()


@contextmanager
def redis_database() -> Iterator[int]:
    """A Redis database number that holds no keys, flushed after."""
    import redis  # installed with celery[redis] (pyproject)
    probe = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=0, socket_connect_timeout=5)
    try:
        probe.ping()
    except redis.exceptions.RedisError as exc:
        pytest.fail(f"Redis is not running at {REDIS_HOST}:{REDIS_PORT}: {exc}")
    try:
        count = int(probe.config_get("databases").get("databases", 16))
    except redis.exceptions.ResponseError:      # CONFIG disabled: the default number
        count = 16
    finally:
        probe.close()
    # the high numbers first: database 0 is where anything else on the machine keeps its keys
    for number in range(count - 1, 0, -1):
        client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=number)
        if client.dbsize() == 0:
            break
        client.close()
    else:
        pytest.fail("every Redis database holds keys: none is free for the Celery broker")
    try:
        yield number
    finally:
        client.flushdb()
        client.close()
