"""The cluster subcommands of `selfsup`: tune, submit, jobs (list, logs, stop).

The only commands that import `selfsup.cluster` (and so Ray), each inside its handler. Each
handler turns arguments into plain function calls.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from selfsup.errors import ConfigError

DEFAULT_DASHBOARD = "http://127.0.0.1:8265"


def _tune(args: argparse.Namespace) -> int:
    from selfsup.api import data_location
    from selfsup.cluster.local_ray import shutdown_ray
    from selfsup.cluster.tune import format_table, load_raw_config, run_search

    overrides = list(args.set or [])
    if args.data:
        overrides.append(f"data.path={data_location(args.data)}")
    raw = load_raw_config(args.config, overrides)
    if not (raw.get("data") or {}).get("path"):
        raise ConfigError("no dataset: pass --data OUT (a folder written by `selfsup convert`)")
    outcome = run_search(raw, args.output, samples=args.samples, cpus_per_trial=args.cpus_per_trial,
                         gpus_per_trial=args.gpus_per_trial, concurrent=args.concurrent, address=args.address,
                         grace_steps=args.grace_steps, workers_per_trial=args.workers_per_trial)
    shutdown_ray()  # the search is over: the failed trials' forwarded logs stop before the table
    print(format_table(outcome["table"]))
    for trial, message in outcome["failures"].items():
        print(f"trial {trial} failed: {message}")
    if outcome["interrupted"]:
        print(f"search interrupted; run the same command again to continue it ({outcome['experiment']})")
        return 130
    if outcome["best"] is None:
        print(f"selfsup: error: every trial failed ({len(outcome['failures'])} of {len(outcome['table'])}); "
              f"their errors are above and in {outcome['experiment']}", file=sys.stderr)
        return 1
    print(f"best {outcome['metric']} ({outcome['mode']}): {outcome['best_value']} with "
          + ", ".join(f"{key}={value}" for key, value in outcome["best"].items()))
    print(f"best config: {outcome['best_path']}  (selfsup train --config {outcome['best_path']} --output RUN)")
    print(f"tensorboard: tensorboard --logdir {Path(args.output) / 'trials'}")
    return 0


def _cluster_errors(handler):
    """An unreachable or refusing dashboard: one clear line and status 2, not a traceback."""
    def guarded(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except Exception as error:
            from selfsup.cluster.jobs import is_dashboard_refusal

            if not is_dashboard_refusal(error):
                raise
            print(f"selfsup: error: {args.address}: {str(error).splitlines()[0]}", file=sys.stderr)
            return 2
    return guarded


def _submit(args: argparse.Namespace) -> int:
    from selfsup.cluster.jobs import submit

    command = list(args.command_line)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise ConfigError("nothing to submit: give a selfsup command after --, e.g. -- train --config ...")
    return submit(args.address, command, working_dir=args.working_dir, python=args.python,
                  follow=not args.no_wait)


def _jobs(args: argparse.Namespace) -> int:
    from selfsup.cluster import jobs

    if args.action == "list":
        print(jobs.format_jobs(jobs.list_jobs(args.address)))
        return 0
    if not args.job_id:
        raise ConfigError(f"selfsup jobs {args.action} needs a job id (see `selfsup jobs list`)")
    if args.action == "logs":
        return jobs.show_logs(args.address, args.job_id, follow=args.follow)
    print(jobs.stop_job(args.address, args.job_id))
    return 0


def add_commands(commands) -> None:
    """Add `tune`, `submit` and `jobs` to the `selfsup` subparsers."""
    tune = commands.add_parser("tune", help="hyperparameter search with Ray Tune (ASHA), space in the config's "
                                            "search: section")
    tune.add_argument("--config", required=True, help="a YAML config (or a shipped config's name) with a "
                      "top-level search: section")
    tune.add_argument("--data", help="a converted dataset folder (sets data.path)")
    tune.add_argument("--output", required=True, help="the search folder (trials/, best.yaml)")
    tune.add_argument("--samples", type=int, default=8, help="trials to run (default 8)")
    tune.add_argument("--cpus-per-trial", type=float, default=1.0)
    tune.add_argument("--gpus-per-trial", type=float, default=0.0)
    tune.add_argument("--workers-per-trial", type=int, default=None,
                      help="DDP workers in each trial, each trial a Ray Train run (default: the config's "
                           "trial.workers, else 1); --cpus/--gpus-per-trial are shared among them")
    tune.add_argument("--concurrent", type=int, default=None, help="trials at once (default: as resources allow)")
    tune.add_argument("--grace-steps", type=int, default=None,
                      help="steps before ASHA may stop a trial (default: a quarter of the run)")
    tune.add_argument("--address", default=None, help="a running Ray cluster ('auto'); default: local Ray")
    tune.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value")
    tune.set_defaults(run=_tune)

    submit = commands.add_parser("submit", help="run a selfsup command on a Ray cluster as a Ray job")
    submit.add_argument("--address", default=DEFAULT_DASHBOARD,
                        help=f"the cluster's dashboard (default {DEFAULT_DASHBOARD}, e.g. through an SSH tunnel)")
    submit.add_argument("--working-dir", default=".", help="the project folder to ship (default: here)")
    submit.add_argument("--python", default="python", help="the Python on the cluster (default: python)")
    submit.add_argument("--no-wait", action="store_true", help="print the job id and return at once")
    submit.add_argument("command_line", nargs=argparse.REMAINDER, help="-- then a selfsup command")
    submit.set_defaults(run=_cluster_errors(_submit))

    jobs = commands.add_parser("jobs", help="list Ray jobs, show a job's logs, stop a job")
    jobs.add_argument("action", choices=("list", "logs", "stop"))
    jobs.add_argument("job_id", nargs="?", help="the job (submission) id, for logs and stop")
    jobs.add_argument("--address", default=DEFAULT_DASHBOARD)
    jobs.add_argument("--follow", action="store_true", help="logs: keep streaming until the job ends")
    jobs.set_defaults(run=_cluster_errors(_jobs))
