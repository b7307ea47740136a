"""Hyperparameter search with Ray Tune: each trial a full training run, ASHA stops the weak ones.

The search space lives in the config file, in a top-level `search:` section of dotted keys::

    search:
      optim.lr: loguniform(1e-4, 1e-1)
      method.temperature: choice([0.1, 0.2, 0.5])
      optim.weight_decay: uniform(0.0, 1e-4)
      data.batch_size: randint(8, 33)        # upper bound excluded
      optim.name: [lars, adamw]              # a plain list is a choice

Each trial runs `trainer.loop.train` in its own folder `OUTPUT/trials/TRIAL_ID/` (checkpoints,
TensorBoard), reporting to Tune every `trainer.log_every` steps. The metric is the online kNN
top-1 accuracy (`knn_top1`, higher is better) when `eval.online_knn_every_epochs` is set, the
training loss otherwise. At the end: a table of the trials, and `OUTPUT/best.yaml`, the best
trial's full config, ready for `selfsup train --config OUTPUT/best.yaml`. Started again on the same
OUTPUT, an interrupted search continues (`Tuner.restore`); unfinished trials continue from their
own latest checkpoints.
"""

from __future__ import annotations

import ast
import copy
import re
from pathlib import Path

import yaml
from ray import tune  # Ray: the search (Tuner, ASHA, search-space domains)
from ray.tune.schedulers import ASHAScheduler

from cluster.local_ray import ensure_ray
from cluster.train_job import stage_if_remote
from pipeline.dataset import load_dataset_info
from pipeline.staging import is_uri
from trainer.config import Config, ConfigError, config_from_dict, config_to_dict, save_config
from trainer.loop import train

SEARCH_KEY = "search"
EXPERIMENT = "search"  # OUTPUT/search: Tune's own state, what `Tuner.restore` reads
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
    """A config file's contents -> (the config without `search:`, {dotted key: domain text})."""
    raw = copy.deepcopy(raw)
    search = raw.pop(SEARCH_KEY, None) or {}
    if not isinstance(search, dict):
        raise ConfigError(f"{SEARCH_KEY}: expected a mapping of dotted config keys to search domains")
    return raw, search


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


def target_metric(config: Config) -> tuple[str, str]:
    """(metric, mode): online kNN top-1 when the run measures it, else the training loss."""
    if config.eval.online_knn_every_epochs > 0:
        return "knn_top1", "max"
    return "loss", "min"


def _trial(parameters: dict) -> None:
    """One Tune trial: a full training run with this trial's values, in its own folder."""
    config = stage_if_remote(config_with(parameters["base"], parameters["values"]))
    metric = parameters["metric"]
    output = Path(parameters["output"]) / "trials" / tune.get_context().get_trial_id()  # Ray

    def report(metrics: dict) -> None:
        if metric in metrics:  # with kNN as the metric, only the results that carry it
            tune.report(dict(metrics))  # Ray: to the scheduler and the results table

    train(config, output, report=report)


def _total_steps(config: Config, workers: int = 1) -> int:
    if config.trainer.max_steps:
        return config.trainer.max_steps
    count = load_dataset_info(config.data.path).split("train").count
    return config.trainer.epochs * max(1, count // (config.data.batch_size * workers))


def run_search(raw: dict, output: str | Path, *, samples: int, cpus_per_trial: float = 1,
               gpus_per_trial: float = 0, concurrent: int | None = None, address: str | None = None,
               grace_steps: int | None = None) -> dict:
    """Run (or continue) the search; write OUTPUT/best.yaml; return {'table', 'best', 'metric', ...}.

    Interrupted (Ctrl-C), it returns {'table', 'interrupted': True} and writes no best.yaml.
    """
    output = Path(output).resolve()
    base_dict, search = split_search(raw)
    base = config_from_dict(base_dict)
    if not search:
        raise ConfigError(f"the config has no `{SEARCH_KEY}:` section: nothing to search over")
    space = search_space(base, search)
    metric, mode = target_metric(base)
    total = _total_steps(base) if not is_uri(str(base.data.path)) else base.trainer.max_steps or 1
    scheduler = ASHAScheduler(time_attr="step", max_t=max(1, total), reduction_factor=2,
                              grace_period=max(1, min(total, grace_steps or max(1, total // 4))))
    ensure_ray(address, num_cpus=cpus_per_trial * (concurrent or 1))
    parameters = {"base": config_to_dict(base), "values": space, "metric": metric, "output": str(output)}
    trainable = tune.with_resources(_trial, {"cpu": cpus_per_trial, "gpu": gpus_per_trial})  # Ray
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
    results = tuner.fit()
    rows = []
    for result in results:
        values = (result.config or {}).get("values", {})
        metrics = result.metrics or {}
        rows.append({"trial": metrics.get("trial_id", Path(result.path).name),
                     **{key: values.get(key) for key in search},
                     metric: metrics.get(metric), "step": metrics.get("step"),
                     "error": type(result.error).__name__ if result.error else ""})
    finished = [result for result in results if result.error or (result.metrics or {}).get("done")]
    if len(finished) < samples:  # Ctrl-C: Tune saved its state (done: finished or stopped by ASHA)
        return {"table": rows, "interrupted": True, "metric": metric, "experiment": str(experiment)}
    best = results.get_best_result(metric=metric, mode=mode, scope="last")
    best_values = best.config["values"]
    best_config = config_with(base_dict, best_values)
    save_config(best_config, output / "best.yaml")
    return {"table": rows, "interrupted": False, "best": best_values, "metric": metric, "mode": mode,
            "best_value": best.metrics.get(metric), "best_path": str(output / "best.yaml")}


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
    from trainer.config import apply_override

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    raw = yaml.safe_load(path.read_text()) or {}
    for assignment in overrides:
        apply_override(raw, assignment)
    return raw
