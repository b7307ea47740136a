"""Hyperparameter search with Ray Tune: each trial a full training run, ASHA stops the weak ones.

The search space lives in the config file, in a top-level `search:` section of dotted keys::

    search:
      optim.lr: loguniform(1e-4, 1e-1)
      method.temperature: choice([0.1, 0.2, 0.5])
      optim.weight_decay: uniform(0.0, 1e-4)
      data.batch_size: randint(8, 33)        # upper bound excluded
      optim.name: [lars, adamw]              # a plain list is a choice

Each trial runs `trainer.loop.train` in its own folder `OUTPUT/trials/TRIAL_ID/` (checkpoints,
TensorBoard), reporting to Tune every `trainer.log_every` steps. A trial is one process, or, with
several workers per trial (`workers_per_trial`, or in the config file)::

    trial:
      workers: 4        # DDP ranks per trial; also `--set trial.workers=4`

a Ray Train run of its own: the trial function is the driver of a `TorchTrainer` whose workers
run the same training function as `selfsup train --workers 4` (`cluster.train_job`), DDP over gloo
on CPUs or NCCL with one GPU per rank; rank 0's reports reach Tune, so ASHA stops a whole
multi-worker run. `cpus_per_trial` and `gpus_per_trial` are the trial's total, shared equally by its
workers (`gpus_per_trial` is then 0 or one GPU per worker). The metric is the online kNN
top-1 accuracy (`knn_top1`, higher is better) when `eval.online_knn_every_epochs` is set, the
training loss otherwise. At the end: a table of the trials, and `OUTPUT/best.yaml`, the best
trial's full config, ready for `selfsup train --config OUTPUT/best.yaml`. Started again on the same
OUTPUT, an interrupted search continues (`Tuner.restore`); unfinished trials continue from their
own latest checkpoints. While a search runs it holds OUTPUT's lock (`selfsup.locks`): a second
search into OUTPUT fails at once, before Ray starts, with one line naming the first; the trials,
in their own processes, run under that lock and take none (`trainer.loop.train` never does).
"""

from __future__ import annotations

import ast
import copy
import itertools
import math
import re
from pathlib import Path

from selfsup.cluster.local_ray import ensure_ray  # first: it must set up the environment before Ray is imported

import ray
import yaml
from ray import tune  # Ray: the search (Tuner, ASHA, search-space domains)
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler

from selfsup.cluster.train_job import build_torch_trainer, raising_reported_worker_errors, stage_if_remote
from selfsup.pipeline.dataset import load_dataset_info
from selfsup.pipeline.staging import is_uri
from selfsup.trainer.config import Config, config_from_dict, config_to_dict, save_config
from selfsup.errors import ConfigError
from selfsup.locks import hold_output_folder
from selfsup.trainer.loop import train
from selfsup.trainer.model import check_buildable

SEARCH_KEY = "search"
TRIAL_KEY = "trial"  # how each trial runs; not part of the training config
TRIAL_DEFAULTS = {"workers": 1}
# A multi-worker trial only drives its Ray Train run (whose workers ask for the CPUs and GPUs);
# Tune needs some resource to place it, so a token share of a CPU.
DRIVER_CPUS = 0.01
EXPERIMENT = "search"  # OUTPUT/search: Tune's own state, what `Tuner.restore` reads
TUNE_LOCK_PURPOSE = "selfsup tune"  # how a refused second search names the holder of OUTPUT
DOMAINS = {"loguniform": tune.loguniform, "uniform": tune.uniform, "randint": tune.randint,
           "quniform": tune.quniform, "qloguniform": tune.qloguniform, "choice": tune.choice}


def parse_domain(key: str, text) -> object:
    """'loguniform(1e-4, 1e-1)' -> tune.loguniform(1e-4, 1e-1); a list -> tune.choice(list)."""
    if isinstance(text, list):
        return tune.choice(text)
    match = re.fullmatch(r"\s*([a-z]+)\s*\((.*)\)\s*", str(text), flags=re.DOTALL)
    if not match or match.group(1) not in DOMAINS:
        raise ConfigError(f"search.{key}: {text!r} is not a search domain; expected one of "
                          f"{', '.join(f'{name}(...)' for name in DOMAINS)} or a list of choices")
    try:
        arguments = ast.literal_eval(f"({match.group(2)},)")
    except (ValueError, SyntaxError) as error:
        raise ConfigError(f"search.{key}: cannot read the arguments of {text!r} ({error})") from None
    try:
        return DOMAINS[match.group(1)](*arguments)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"search.{key}: {text!r}: {error}") from None


def _set_dotted(data: dict, key: str, value) -> None:
    *parents, last = key.split(".")
    for parent in parents:
        data = data.setdefault(parent, {})
    data[last] = value


def _has_dotted(data: dict, key: str) -> bool:
    for part in key.split("."):
        if not isinstance(data, dict) or part not in data:
            return False
        data = data[part]
    return True


def split_search(raw: dict) -> tuple[dict, dict]:
    """A config file's contents -> (the config without `search:` and `trial:`, {dotted key: domain text})."""
    raw = copy.deepcopy(raw)
    raw.pop(TRIAL_KEY, None)
    search = raw.pop(SEARCH_KEY, None) or {}
    if not isinstance(search, dict):
        raise ConfigError(f"{SEARCH_KEY}: expected a mapping of dotted config keys to search domains")
    return raw, _dotted(search)


def _dotted(section: dict, prefix: str = "") -> dict:
    """Nested mappings flattened to dotted keys: `--set search.optim.lr=...` nests `optim: {lr: ...}`
    under search, the YAML file usually says `optim.lr: ...`; both mean the key `optim.lr`."""
    flat = {}
    for key, value in section.items():
        if isinstance(value, dict):
            flat.update(_dotted(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def trial_settings(raw: dict) -> dict:
    """The config file's `trial:` section, checked, with defaults: {'workers': N}."""
    section = raw.get(TRIAL_KEY) or {}
    if not isinstance(section, dict):
        raise ConfigError(f"{TRIAL_KEY}: expected a mapping such as {{workers: 2}}, got {section!r}")
    unknown = [key for key in section if key not in TRIAL_DEFAULTS]
    if unknown:
        raise ConfigError(f"unknown config key {TRIAL_KEY}.{unknown[0]}; valid keys in {TRIAL_KEY}: "
                          f"{', '.join(TRIAL_DEFAULTS)}")
    settings = {**TRIAL_DEFAULTS, **section}
    _check_workers(settings["workers"], f"{TRIAL_KEY}.workers")
    return settings


def _check_workers(workers, name: str) -> int:
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"{name}: expected a whole number of workers, 1 or more, got {workers!r}")
    return workers


def worker_resources(workers: int, cpus_per_trial: float, gpus_per_trial: float) -> dict:
    """Each worker's share of the trial's resources: {'CPU': c} or {'CPU': c, 'GPU': 1}."""
    if cpus_per_trial <= 0:
        raise ConfigError(f"cpus per trial: expected more than 0, got {cpus_per_trial!r}")
    resources = {"CPU": cpus_per_trial / workers}
    if gpus_per_trial:
        if gpus_per_trial != workers:
            raise ConfigError(f"gpus per trial {gpus_per_trial:g} with {workers} workers per trial: each worker "
                              f"(one DDP rank) needs a GPU of its own; use gpus per trial {workers} (or 0)")
        resources["GPU"] = 1
    return resources


def config_with(base: dict, values: dict) -> Config:
    """The config `base` (a plain dict) with each dotted key in `values` set."""
    data = copy.deepcopy(base)
    for key, value in values.items():
        _set_dotted(data, key, value)
    return config_from_dict(data)


def search_space(base: Config, search: dict) -> dict:
    """{dotted key: Tune domain}; every key must name a field of the config."""
    known = config_to_dict(base)
    space = {}
    for key, text in search.items():
        if not _has_dotted(known, key):
            raise ConfigError(f"search.{key}: no such config key")
        space[key] = parse_domain(key, text)
    return space


MAX_CHECKED_COMBINATIONS = 64


def _edge_values(domain) -> list:
    """A domain's values worth building: every choice, or a range's two ends."""
    categories = getattr(domain, "categories", None)
    if categories is not None:
        return list(categories)
    upper = domain.upper - 1 if isinstance(domain, tune.search.sample.Integer) else domain.upper  # randint: exclusive
    return [domain.lower, upper]


def check_search(base: dict, space: dict) -> None:
    """Refuse, before Ray starts a trial, a search whose values give a config that cannot be built.

    Each combination of every choice and both ends of every range (each key on its own when there
    are more than 64 combinations) is turned into a config, its view recipe and its model (on the
    meta device): `data.image_size: [40, 48]` with a ViT of patch 16 fails here with one line,
    not in the trial that samples 40.
    """
    keys = list(space)
    edges = [_edge_values(space[key]) for key in keys]
    if math.prod(len(values) for values in edges) <= MAX_CHECKED_COMBINATIONS:
        combinations = [dict(zip(keys, values)) for values in itertools.product(*edges)]
    else:
        combinations = [{key: value} for key, values in zip(keys, edges) for value in values]
    for values in combinations:
        where = ", ".join(f"{key}={value!r}" for key, value in values.items())
        try:
            check_buildable(config_with(base, values))
        except (ConfigError, ValueError) as error:
            raise ConfigError(f"search values {where}: {error}") from None


def target_metric(config: Config) -> tuple[str, str]:
    """(metric, mode): online kNN top-1 when the run measures it, else the training loss."""
    if config.eval.online_knn_every_epochs > 0:
        return "knn_top1", "max"
    return "loss", "min"


def _trial(parameters: dict) -> None:
    """One Tune trial: a full training run with this trial's values, in its own folder."""
    config, staging = stage_if_remote(config_with(parameters["base"], parameters["values"]))
    metric = parameters["metric"]
    output = Path(parameters["output"]) / "trials" / tune.get_context().get_trial_id()  # Ray

    def report(metrics: dict) -> None:
        if metric in metrics:  # with kNN as the metric, only the results that carry it
            tune.report(dict(metrics))  # Ray: to the scheduler and the results table

    train(config, output, report=report, staging=staging)


class _TuneMetricReport(TuneReportCallback):  # Ray: Train reports -> this trial's Tune results
    """Rank 0's metrics of each Ray Train report that carries the search metric, to Tune."""

    def __init__(self, metric: str):
        super().__init__()
        self.metric = metric

    def after_report(self, run_context, metrics, checkpoint):
        if self.metric in metrics[0]:  # with kNN as the metric, only the results that carry it
            super().after_report(run_context, metrics, checkpoint)


def _trial_with_workers(parameters: dict) -> None:
    """One Tune trial as the driver of a Ray Train run of `parameters['workers']` DDP workers.

    The workers run `cluster.train_job`'s worker function: staging, restart from the checkpoint
    Ray keeps in OUTPUT/trials/TRIAL_ID/ray, training, reports. Started again (a continued
    search, the same trial id), the run continues from its own latest checkpoint.
    """
    config = config_with(parameters["base"], parameters["values"])  # each worker stages a URI dataset
    output = Path(parameters["output"]) / "trials" / tune.get_context().get_trial_id()  # Ray
    output.mkdir(parents=True, exist_ok=True)
    trainer = build_torch_trainer(config, output, workers=parameters["workers"],
                                  resources=parameters["worker_resources"], run_name="ray",
                                  storage_path=str(output), callbacks=(_TuneMetricReport(parameters["metric"]),))
    with raising_reported_worker_errors():  # a NaN loss or bad data fails the trial as itself
        trainer.fit()


def trial_failure(error: BaseException) -> tuple[str, str]:
    """(type name, "Type: first line of the message") of a failed trial's error, found inside Ray's
    wrappers (`RayTaskError.cause`; a `TuneError` that carries only a traceback's text)."""
    while getattr(error, "cause", None) is not None and error.cause is not error:
        error = error.cause
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if lines and lines[0].startswith("Traceback"):  # a traceback's text: its last line names the error
        qualified, _, message = lines[-1].partition(":")
        name = qualified.rsplit(".", 1)[-1]
        return name, f"{name}:{message}" if message else name
    name = type(error).__name__
    return name, f"{name}: {lines[0]}" if lines else name


def _total_steps(config: Config, workers: int = 1) -> int:
    if config.trainer.max_steps:
        return config.trainer.max_steps
    count = load_dataset_info(config.data.path).split("train").count
    return config.trainer.epochs * max(1, count // (config.data.batch_size * workers))


def _trials_that_fit(cpus_per_trial: float, gpus_per_trial: float) -> int:
    """How many multi-worker trials the Ray cluster's resources hold at once (at least 1)."""
    available = ray.cluster_resources()  # Ray
    counts = [available.get("CPU", 0) // (cpus_per_trial + DRIVER_CPUS)]
    if gpus_per_trial:
        counts.append(available.get("GPU", 0) // gpus_per_trial)
    return max(1, int(min(counts)))


def run_search(raw: dict, output: str | Path, *, samples: int, cpus_per_trial: float = 1,
               gpus_per_trial: float = 0, concurrent: int | None = None, address: str | None = None,
               grace_steps: int | None = None, workers_per_trial: int | None = None) -> dict:
    """Run (or continue) the search; write OUTPUT/best.yaml; return {'table', 'best', 'metric', ...}.

    `workers_per_trial`: DDP workers in each trial (default: the config's `trial.workers`, else 1).
    Interrupted (Ctrl-C), it returns {'table', 'interrupted': True} and writes no best.yaml.
    """
    output = Path(output).resolve()
    settings = trial_settings(raw)
    workers = settings["workers"] if workers_per_trial is None else _check_workers(workers_per_trial,
                                                                                 "workers per trial")
    base_dict, search = split_search(raw)
    base = config_from_dict(base_dict)
    if not search:
        raise ConfigError(f"the config has no `{SEARCH_KEY}:` section: nothing to search over")
    space = search_space(base, search)
    check_search(base_dict, space)
    metric, mode = target_metric(base)
    total = _total_steps(base, workers) if not is_uri(str(base.data.path)) else base.trainer.max_steps or 1
    # max_t one past the last step: a trial that reaches its end finishes by itself rather than being
    # stopped by Tune, which would kill a multi-worker trial's driver while its Ray Train run shuts down
    scheduler = ASHAScheduler(time_attr="step", max_t=max(1, total) + 1, reduction_factor=2,
                              grace_period=max(1, min(total, grace_steps or max(1, total // 4))))
    resources = worker_resources(workers, cpus_per_trial, gpus_per_trial) if workers > 1 else None
    driver_cpus = DRIVER_CPUS if resources is not None else 0
    # OUT's lock, before Ray starts: a second search into OUT stops here with one line naming this one
    with hold_output_folder(output, TUNE_LOCK_PURPOSE):
        ensure_ray(address, num_cpus=math.ceil((cpus_per_trial + driver_cpus) * (concurrent or 1)))
        parameters = {"base": config_to_dict(base), "values": space, "metric": metric, "output": str(output)}
        if resources is None:
            trainable = tune.with_resources(_trial, {"cpu": cpus_per_trial, "gpu": gpus_per_trial})  # Ray
        else:  # the trial only drives its Ray Train workers, which ask for the resources themselves
            parameters.update(workers=workers, worker_resources=resources)
            trainable = tune.with_resources(_trial_with_workers, {"cpu": DRIVER_CPUS})  # Ray
            concurrent = concurrent or _trials_that_fit(cpus_per_trial, gpus_per_trial)
        experiment = output / EXPERIMENT
        if tune.Tuner.can_restore(str(experiment)):  # Ray: an interrupted search continues
            print(f"continuing the search in {experiment}", flush=True)
            tuner = tune.Tuner.restore(str(experiment), trainable, resume_unfinished=True, restart_errored=True,
                                       param_space=parameters)
        else:
            tuner = tune.Tuner(
                trainable, param_space=parameters,
                tune_config=tune.TuneConfig(metric=metric, mode=mode, scheduler=scheduler, num_samples=samples,
                                            max_concurrent_trials=concurrent),
                run_config=tune.RunConfig(name=EXPERIMENT, storage_path=str(output), verbose=1),
            )
        return _search_outcome(tuner.fit(), base_dict, search, samples, metric, mode, output)


def _search_outcome(results, base_dict: dict, search: dict, samples: int, metric: str, mode: str,
                    output: Path) -> dict:
    """`run_search`'s answer from Tune's results; writes OUTPUT/best.yaml when the search is over."""
    experiment = output / EXPERIMENT
    rows, failures = [], {}
    for result in results:
        values = (result.config or {}).get("values", {})
        metrics = result.metrics or {}
        trial = metrics.get("trial_id", Path(result.path).name)
        name, message = trial_failure(result.error) if result.error else ("", None)
        if message:
            failures[trial] = message
        rows.append({"trial": trial, **{key: values.get(key) for key in search},
                     metric: metrics.get(metric), "step": metrics.get("step"), "error": name})
    finished = [result for result in results if result.error or (result.metrics or {}).get("done")]
    outcome = {"table": rows, "failures": failures, "metric": metric, "mode": mode, "experiment": str(experiment)}
    if len(finished) < samples:  # Ctrl-C: Tune saved its state (done: finished or stopped by ASHA)
        return {**outcome, "interrupted": True}
    # the best among the trials that did not fail (one that diverged may have reported a low loss first)
    candidates = [result for result in results if not result.error
                  and math.isfinite(float((result.metrics or {}).get(metric, math.nan)))]
    if not candidates:
        return {**outcome, "interrupted": False, "best": None}
    best = (min if mode == "min" else max)(candidates, key=lambda result: float(result.metrics[metric]))
    best_values = best.config["values"]
    best_config = config_with(base_dict, best_values)
    save_config(best_config, output / "best.yaml")
    return {**outcome, "interrupted": False, "best": best_values, "best_value": best.metrics.get(metric),
            "best_path": str(output / "best.yaml")}


def format_table(rows: list[dict]) -> str:
    """The trials as an aligned text table."""
    if not rows:
        return "(no trials)"
    columns = list(rows[0])
    cells = [[_cell(row.get(column)) for column in columns] for row in rows]
    widths = [max(len(column), *(len(line[index]) for line in cells)) for index, column in enumerate(columns)]
    lines = ["  ".join(column.ljust(width) for column, width in zip(columns, widths))]
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)) for line in cells]
    return "\n".join(lines)


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def load_raw_config(path: str | Path, overrides: list[str]) -> dict:
    """A config file as a plain dict, `--set` overrides applied (the `search:` section kept)."""
    from selfsup.trainer.config import apply_override, read_config_file

    raw = read_config_file(path)
    for assignment in overrides:
        apply_override(raw, assignment)
    return raw
