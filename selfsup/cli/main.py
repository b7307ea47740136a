"""The `selfsup` command: its parser and the one place user errors become one line.

Every command turns its arguments into calls of the public API (`selfsup.api`) or of the
packages; user errors (a wrong path, a bad config key, a corrupt checkpoint) print one clear
`selfsup: error: ...` line and exit with status 2, a diverged run with status 1.
"""

from __future__ import annotations

import argparse
import sys

from selfsup import __version__
from selfsup.cli import (
    cluster_commands, data_commands, embed_commands, evaluate_commands, index_commands, train_commands,
)
from selfsup.errors import USER_ERRORS, NonFiniteLossError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="selfsup", description="Self-supervised visual pretraining at scale.")
    parser.add_argument("--version", action="version", version=f"selfsup {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    data_commands.add_commands(commands)  # convert, verify, preview
    index_commands.add_commands(commands)  # index
    train_commands.add_commands(commands)  # train, methods, configs
    evaluate_commands.add_commands(commands)  # eval, export
    embed_commands.add_commands(commands)  # embed
    cluster_commands.add_commands(commands)  # tune, submit, jobs
    return parser


def disconnect_ray() -> None:
    """Leave Ray, if this command started or joined it, before the command's last lines: Ray forwards
    the logs of failed workers (their tracebacks) to this process until then, and they would
    otherwise arrive after the one line that says what went wrong. Never imports Ray itself."""
    if "ray" in sys.modules:
        from selfsup.cluster.local_ray import shutdown_ray

        shutdown_ray()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except USER_ERRORS as error:
        disconnect_ray()
        print(f"selfsup: error: {error}", file=sys.stderr)
        return 2
    except NonFiniteLossError as error:  # the run diverged: not a usage error, but one line all the same
        disconnect_ray()
        print(f"selfsup: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("selfsup: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
