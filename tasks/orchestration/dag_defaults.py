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


# JSON-schema keywords that Airflow 3's trigger form turns into input limits which act without a word:
# its number field clamps a value out of [minimum, maximum] on blur (Zag's clampValueOnBlur: epochs 0
# becomes 1, 1000 becomes 200) and its text field cuts what is typed at maxLength. The form reads them
# only at the top of a Param's schema, so param() moves every limit under ``allOf``: the form then keeps
# what was typed, and Airflow validates the run's conf against the limits when the run is created (the
# form's Trigger, the REST API, `airflow dags trigger`, dag.test) and refuses a bad value with a 400 that
# names the Param, the value and the limit ("epochs: 0 is less than the minimum of 1", quoting only the
# small sub-schema), before any run exists. Type and enum stay at the top: they choose the field's widget.
LIMITS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "minLength", "maxLength",
          "pattern")


def param(default: Any, *, title: str, section: str, description: str, **schema):
    """A trigger-form Param whose limits the server enforces and the form never applies silently (see
    LIMITS). A text field's description gets its length limit appended, as a number field's states its
    range (form_field)."""
    from airflow.sdk import Param
    limits = {name: schema.pop(name) for name in LIMITS if name in schema}
    if "maxLength" in limits and "characters" not in description:
        description = f"{description} At most {limits['maxLength']} characters."
    if limits:
        schema["allOf"] = [limits]
    return Param(default, title=title, description=description, section=section, **schema)


def limits(schema: dict) -> dict:
    """The limits of a Param's schema as param() placed them (under allOf), and any left at the top."""
    found = {name: schema[name] for name in LIMITS if name in schema}
    for part in schema.get("allOf", []):
        found.update({name: part[name] for name in LIMITS if name in part})
    return found


def form_field(dotted: str, default: Any, *, title: str, section: str, nullable: bool = False,
               description: str | None = None, **extra):
    """A trigger-form Param for the params.yaml key ``dotted``: its JSON-schema type and limits, and
    its help with the range it accepts (the form refuses what params.yaml would refuse; param() keeps
    the form from clamping instead). ``nullable`` lets an optional text field be left empty (a field
    whose type has no null is required)."""
    key = params_schema.key(dotted)
    schema = {**key.json_schema(), **extra}
    if nullable:
        schema["type"] = ["null", schema["type"]]
    # Key.describe() capitalises the help's first letter; "mAP@10 ..." stays as it is written
    text = description or (f"{key.help} ({key.expected})." if key.help[1:2].isupper() else key.describe())
    return param(default, title=title, description=f"{text} params.yaml: {dotted}.", section=section, **schema)
