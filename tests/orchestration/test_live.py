"""The live view of `make run` (tasks/orchestration/live.py) on Airflow's real output format."""

from __future__ import annotations

import io
import json

from tasks.orchestration import live

AIRFLOW_OUTPUT = """\
2026-12-06T09:16:21.740177Z [info     ] [DAG TEST] starting task_id=prepare map_index=-1 [airflow.sdk.definitions.dag] loc=dag.py:1501
2026-12-06T09:16:21.740300Z [info     ] [DAG TEST] running task <TaskInstance: trafficlip_training.prepare manual__2026-12-06T09:16:21+00:00 [TaskInstanceState.SCHEDULED]> [airflow.sdk.definitions.dag] loc=dag.py:1504
09:17:29 INFO [prepare run=manual__2026-12-06T09:16:21+00:00] scanning data/raw (images padded to square, resized to 96 px)
09:17:48 INFO [prepare run=manual__2026-12-06T09:16:21+00:00] decode train: 4450/7040 (296.6/s)
2026-12-06T09:18:02.220620Z [info     ] Task instance state updated    [airflow.api_fastapi.execution_api.routes.task_instances] correlation_id=x loc=task_instances.py:485 new_state=success rows_affected=1 ti_id=y
2026-12-06T09:18:02.240302Z [info     ] [DAG TEST] end task task_id=prepare map_index=-1 [airflow.sdk.definitions.dag] loc=dag.py:1563
2026-12-06T09:18:22.763182Z [info     ] [DAG TEST] starting task_id=choose_runner map_index=-1 [airflow.sdk.definitions.dag] loc=dag.py:1501
2026-12-06T09:18:26.866663Z [info     ] Skipping tasks [('train_docker', -1), ('train_kubernetes', -1)] [airflow.task.operators] loc=x
2026-12-06T09:18:26.947206Z [info     ] Task instance state updated    [x] loc=task_instances.py:485 new_state=success rows_affected=1
2026-12-06T09:18:27.020728Z [info     ] [DAG TEST] end task task_id=choose_runner map_index=-1 [airflow.sdk.definitions.dag] loc=dag.py:1563
2026-12-06T09:19:00.000000Z [info     ] [DAG TEST] starting task_id=evaluate map_index=-1 [airflow.sdk.definitions.dag] loc=dag.py:1501
2026-12-06T09:19:01.000000Z [info     ] Task instance state updated    [x] loc=task_instances.py:485 new_state=skipped rows_affected=1
2026-12-06T09:19:01.100000Z [info     ] [DAG TEST] end task task_id=evaluate map_index=-1 [airflow.sdk.definitions.dag] loc=dag.py:1563
09:19:02 WARNING [predict run=m] 1 test query fits neither category
2026-12-06T09:54:30.600000Z [info     ] Marking run <DagRun trafficlip_training @ 2026-12-06: manual__x, state:running> successful [airflow.models.dagrun.DagRun] loc=dagrun.py:1
"""


def test_the_terminal_sees_tasks_their_states_and_the_steps_progress():
    ticks = iter(range(100))
    shown = list(live.condense(AIRFLOW_OUTPUT.splitlines(), clock=lambda: float(next(ticks))))
    assert shown == [
        "> prepare",
        "    prepare: scanning data/raw (images padded to square, resized to 96 px)",
        "    prepare: decode train: 4450/7040 (296.6/s)",
        "  prepare: done (1.0 s)",
        "> choose_runner",
        "  skipped by the branch: train_docker, train_kubernetes",
        "  choose_runner: done (1.0 s)",
        "> evaluate",
        "  evaluate: skipped (1.0 s)",
        "    predict WARNING: 1 test query fits neither category",
        "run successful",
    ]


def test_everything_still_reaches_the_log_file(tmp_path):
    out = io.StringIO()
    assert live.main([str(tmp_path / "dags-test.log")], stdin=io.StringIO(AIRFLOW_OUTPUT), stdout=out) == 0
    assert (tmp_path / "dags-test.log").read_text() == AIRFLOW_OUTPUT
    assert out.getvalue().splitlines()[0] == "> prepare"


def test_each_task_gets_the_log_file_the_airflow_ui_reads(tmp_path):
    """`airflow dags test` writes no task logs; the live view writes each task's lines where the UI looks
    (Airflow's default log_filename_template under base_log_folder), as Airflow's JSON log lines."""
    from airflow.configuration import conf
    template = conf.get("logging", "log_filename_template")
    assert template.startswith("dag_id={{ ti.dag_id }}/run_id={{ ti.run_id }}/task_id={{ ti.task_id }}/")
    assert template.endswith("attempt={{ try_number|default(ti.try_number) }}.log")
    out = io.StringIO()
    assert live.main([str(tmp_path / "dags-test.log"), str(tmp_path / "logs")], stdin=io.StringIO(AIRFLOW_OUTPUT),
                     stdout=out) == 0
    log = (tmp_path / "logs" / "dag_id=trafficlip_training" / "run_id=manual__2026-12-06T09:16:21+00:00"
           / "task_id=prepare" / "attempt=1.log")
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert records[0]["event"].startswith("[DAG TEST] starting task_id=prepare")
    assert records[0]["timestamp"] == "2026-12-06T09:16:21.740177Z" and records[0]["level"] == "info"
    assert any("decode train: 4450/7040" in r["event"] and r["level"] == "info" for r in records)
    assert records[-1]["event"].startswith("[DAG TEST] end task task_id=prepare")
    from airflow.utils.log.file_task_handler import StructuredLogMessage
    assert all(StructuredLogMessage.model_validate_json(line) for line in log.read_text().splitlines())
