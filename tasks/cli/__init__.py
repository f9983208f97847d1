"""The `trafficlip` command (also `python -m tasks`): one subcommand per pipeline step.

The parser is tasks/cli/parser.py, the commands tasks/cli/commands.py. Errors follow
tasks/core/errors.py: a user's mistake is one line on stderr and exit 2, a failing service (or any
other project error) exit 75 so that an orchestrator retries it; a bug is exit 3, with its traceback
only when TRAFFICLIP_DEBUG=1.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import traceback

from tasks.core.errors import SERVICE_EXIT, USER_EXIT, TrafficlipError, exit_status, is_mlflow_error


def _report_resources(command: str, seconds: float) -> None:
    """A step's last log line: its time and peak memory (what sizing a machine for the real dataset
    needs), where the step logged at all (tasks/core/log.py ``setup``)."""
    logger = logging.getLogger(f"trafficlip.{command}")
    if not logging.getLogger().handlers or not logger.isEnabledFor(logging.INFO):
        return
    from tasks.core.log import duration, peak_memory_mb
    logger.info("finished in %s; peak memory %.0f MB", duration(seconds), peak_memory_mb())


def main(argv: list[str] | None = None) -> int:
    from tasks.cli.parser import build_parser
    args = build_parser().parse_args(argv)
    started = time.perf_counter()
    try:
        status = args.func(args)
        _report_resources(args.command, time.perf_counter() - started)
        return status
    except TrafficlipError as exc:
        print(f"trafficlip {args.command}: error: {exc}", file=sys.stderr)
        return exit_status(exc)
    except KeyboardInterrupt:
        print(f"trafficlip {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if is_mlflow_error(exc):
            from tasks.mlops.tracking import error_text, shown_uri, tracking_uri
            text = error_text(exc)
            print(f"trafficlip {args.command}: error: MLflow at {shown_uri(tracking_uri())}: {text}",
                  file=sys.stderr)
            # a failing or unreachable server is worth a retry; a refused request is not
            transient = text.startswith(("HTTP 5", "connection", "no answer", "host name"))
            return SERVICE_EXIT if transient else USER_EXIT
        # a bug: say so plainly, keep the traceback for those who ask
        if os.environ.get("TRAFFICLIP_DEBUG"):
            traceback.print_exc()
        print(f"trafficlip {args.command}: internal error: {type(exc).__name__}: {exc} "
              "(set TRAFFICLIP_DEBUG=1 for the traceback)", file=sys.stderr)
        return 3
