"""The ``fleetrun`` command.

Exit codes:
  0    the job succeeded (run, wait), the daemon stopped after draining, the check passed
  1    the job was aborted, failed or cancelled; the broker or the storage cannot be reached;
       a check failed
  2    the job spec or the command line is invalid
  130  stopped at once by a second signal (or Ctrl-C)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from fleetrun.cli import daemons, jobs
from fleetrun.cli.common import EXIT_BAD_SPEC, EXIT_FAILED, EXIT_OK, EXIT_STOPPED_NOW

__all__ = ["EXIT_BAD_SPEC", "EXIT_FAILED", "EXIT_OK", "EXIT_STOPPED_NOW", "main", "parser"]
from fleetrun.common.errors import FleetrunError, SpecError


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="fleetrun",
        description="Run an init()/run(mini_batch) entry script over many files, "
        "on one machine or a fleet.",
        epilog=__doc__.split("\n", 2)[2] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = root.add_subparsers(dest="command", required=True, metavar="COMMAND")
    jobs.add_commands(commands)
    daemons.add_commands(commands)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        code: int = args.handler(args)
        return code
    except SpecError as exc:
        print(f"fleetrun: {exc}", file=sys.stderr)
        return EXIT_BAD_SPEC
    except FleetrunError as exc:
        print(f"fleetrun: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("fleetrun: interrupted; re-run the same command to resume.", file=sys.stderr)
        return EXIT_STOPPED_NOW
