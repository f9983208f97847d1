"""What the DAGs share (tasks/orchestration/dag_defaults.py): a user's mistake fails a task at once while
anything else is retried, and a trigger-form field refuses what params.yaml refuses. (The DAGs built
with it: tests/dags/test_dags.py.)"""

from __future__ import annotations

import pytest

from tasks.core.errors import ServiceError, UserError
from tasks.orchestration import dag_defaults


def test_guard_fails_a_user_error_without_retry_and_lets_the_rest_be_retried():
    from airflow.sdk.exceptions import AirflowFailException

    def raising(error):
        raise error

    assert dag_defaults.guard(lambda a, b=0: a + b, 1, b=2) == 3
    with pytest.raises(AirflowFailException, match="^data revision 'x' not found$"):
        dag_defaults.guard(raising, UserError("data revision 'x' not found"))
    with pytest.raises(ServiceError):                     # not AirflowFailException: the task is retried
        dag_defaults.guard(raising, ServiceError("MLflow is down"))
    assert dag_defaults.DEFAULT_ARGS["retries"] >= 2 and dag_defaults.DEFAULT_ARGS["retry_exponential_backoff"]
    longer = dag_defaults.default_args(retries=5)
    assert longer["retries"] == 5 and dag_defaults.DEFAULT_ARGS["retries"] != 5     # a copy, not the shared dict


def test_a_form_field_takes_its_type_limits_and_help_from_the_params_schema():
    from airflow.sdk import ParamsDict
    from airflow.sdk.exceptions import ParamValidationError

    def form(value, dotted="train.epochs", **options):
        return ParamsDict({"field": dag_defaults.form_field(dotted, value, title="Field", section="Training",
                                                            **options)})

    field = dag_defaults.form_field("train.epochs", 3, title="Epochs", section="Training")
    assert field.schema["section"] == "Training" and field.schema["title"] == "Epochs"
    assert field.description.endswith("params.yaml: train.epochs.")
    form(3).validate()
    for bad in (0, "three"):                             # what params.yaml refuses for train.epochs
        with pytest.raises(ParamValidationError):
            form(bad).validate()
    with pytest.raises(ParamValidationError):            # an optional text field left empty: only when nullable
        form(None, "model.pretrained").validate()
    form(None, "model.pretrained", nullable=True).validate()
