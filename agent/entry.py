"""``edgeml agent run``: the daemon's process, from its command line to its exit.

The console entry (``edgeml.toolkit.cli.main``) comes here directly for ``edgeml agent run
--config FILE [--verbose]``, without loading the CLI framework: Typer, Rich and the modules of
every other command would stay in the daemon's memory as long as it runs (years, on a device),
for nothing (about 10 MiB: docs/benchmarks.md, "Agent"). Anything else on that command line
(``--help``, an unknown option) goes to the full CLI, which answers it as it answers any
command. The Typer command ``agent run`` runs the same :func:`run_agent`.

Errors end the process as every ``edgeml`` command ends it: an edgeml error prints
``error: MESSAGE`` on stderr and exits with its code (a bad config: 2); anything unexpected
prints its traceback and where to report it, and exits 1.
"""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from edgeml.toolkit.errors import EdgeMLError, bug_report_line
from edgeml.toolkit.foreground import run_until_signalled

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _to_stderr(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def run_agent(
    config_path: Path, *, verbose: bool = False, announce: Callable[[str], None] = _to_stderr
) -> None:
    """Load the config, start the daemon and run it until SIGTERM or SIGINT.

    The process checks signatures in child processes (``edgeml.toolkit.signatures``): the
    daemon lives for years and checks one now and then, so it does not hold ``cryptography``.

    Raises:
        ConfigError: the config is missing or invalid (the message names the key).
    """
    from edgeml.agent.config import load_config
    from edgeml.agent.daemon import AgentDaemon
    from edgeml.toolkit.signatures import check_in_child_processes

    check_in_child_processes()
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=LOG_FORMAT)
    daemon = AgentDaemon(load_config(config_path))
    announce(f"agent {daemon.config.device_id}: API on {daemon.api.address}")
    run_until_signalled(daemon.run, daemon.stop)


def parse_run_arguments(arguments: Sequence[str]) -> tuple[Path, bool] | None:
    """``--config FILE`` (or ``--config=FILE``) and ``--verbose``/``-v``, in any order; None
    for anything else (left to the full CLI)."""
    config: str | None = None
    verbose = False
    rest = list(arguments)
    while rest:
        word = rest.pop(0)
        if word in ("--verbose", "-v"):
            verbose = True
        elif word == "--config" and rest and not rest[0].startswith("-") and config is None:
            config = rest.pop(0)
        elif word.startswith("--config=") and len(word) > len("--config=") and config is None:
            config = word[len("--config=") :]
        else:
            return None
    return (Path(config), verbose) if config is not None else None


def run_from_command_line(arguments: Sequence[str]) -> bool:
    """Run the daemon for the arguments after ``edgeml agent run``; False (nothing done)
    when they are not plain ``--config``/``--verbose``. Ends the process on an error."""
    parsed = parse_run_arguments(arguments)
    if parsed is None:
        return False
    config_path, verbose = parsed
    try:
        run_agent(config_path, verbose=verbose)
    except EdgeMLError as error:
        _to_stderr(f"error: {error}")
        raise SystemExit(error.exit_code) from None
    except (SystemExit, KeyboardInterrupt):
        raise
    except Exception as error:
        traceback.print_exception(type(error), error, error.__traceback__, file=sys.stderr)
        _to_stderr(f"error: {bug_report_line(error)}")
        raise SystemExit(1) from None
    return True
