"""What the three DAGs share: default task arguments, the error guard, and trigger-form fields built
from the params schema (tasks/core/params.py), so a form field's type, limits and help are the ones
`trafficlip --set` and params.yaml obey.

It lives in the package, not in dags/, so the DAG processor never parses it as a DAG file. Airflow is
imported inside the functions: importing this module stays as light as the DAG files need.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Callable

from tasks.core import params as params_schema
from tasks.core.errors import UserError

# every task: two retries with exponential back-off (a ServiceError or a crashed step); a UserError
# fails at once through guard()
DEFAULT_ARGS = {"retries": 2, "retry_delay": timedelta(seconds=30), "retry_exponential_backoff": True,
                "max_retry_delay": timedelta(minutes=10), "execution_timeout": timedelta(hours=2)}
TAG = "trafficlip"
# Chosen on purpose: the DAGs are active as soon as Airflow loads them (Airflow's default leaves new
# DAGs paused). Training then does what it promises, retrain weekly and when data/raw changes, without
# someone finding the toggle; it is safe because its cron never starts a run for a past Sunday
# (run_immediately=0, catchup off) and its asset fires only on a new data version. Ingest and retrieval
# have no schedule: active, they simply run when triggered. Pause a DAG in the UI to stop it.
PAUSED_UPON_CREATION = False


def default_args(**changes) -> dict:
    """DEFAULT_ARGS with a DAG's own changes (a longer execution_timeout, say)."""
    return {**DEFAULT_ARGS, **changes}


def guard(fn: Callable, *args, **kwargs):
    """Call ``fn``: a UserError (bad data or parameters) fails the task without a retry; anything else
    propagates and is retried with back-off."""
    from airflow.sdk.exceptions import AirflowFailException
    try:
        return fn(*args, **kwargs)
    except UserError as exc:
        raise AirflowFailException(str(exc)) from None


def form_field(dotted: str, default: Any, *, title: str, section: str, nullable: bool = False,
               description: str | None = None, **extra):
    """A trigger-form Param for the params.yaml key ``dotted``: its JSON-schema type and limits, and
    its help with the range it accepts (the form refuses what params.yaml would refuse). ``nullable``
    lets an optional text field be left empty (a field whose type has no null is required)."""
    from airflow.sdk import Param
    key = params_schema.key(dotted)
    schema = key.json_schema()
    if nullable:
        schema["type"] = ["null", schema["type"]]
    text = description or key.describe()
    return Param(default, title=title, description=f"{text} params.yaml: {dotted}.", section=section,
                 **schema, **extra)
