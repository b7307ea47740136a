"""`selfsup eval all` and the store behind every protocol: RUN/eval.json keyed by step, weights,
protocol and options (reused, not redone), scalars in RUN/tensorboard/eval, the comparison with
random init, and the protocols a dataset supports."""

from __future__ import annotations

import json

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from selfsup.cli.main import main
from selfsup.trainer.loop import train
from selfsup.trainer.protocols import EvaluationSession, EvaluationTarget, planned_protocols
from tests.trainer.training_run import OneTorchThread, tiny_config

FAST = ["--protocols", "knn,svm,rankme"]


@pytest.fixture(scope="module")
def trained_run(demo_masked_shards, tmp_path_factory):
    run = tmp_path_factory.mktemp("protocols") / "run"
    with OneTorchThread():
        train(tiny_config(demo_masked_shards, "trainer.max_steps=2"), run)
    return run


def _all(run, data, *extra):
    with OneTorchThread():
        return main(["eval", "all", "--checkpoint", str(run), "--data", str(data), *FAST, *extra])


def _store(run) -> dict:
    return json.loads((run / "eval.json").read_text())


def test_eval_all_stores_every_result_and_reuses_it(trained_run, demo_masked_shards, capsys):
    assert _all(trained_run, demo_masked_shards) == 0
    first = capsys.readouterr().out
    for row in ("knn                top-1", "svm                mAP", "svm                top-1",
                "rankme             effective rank"):
        assert row in first
    assert "(stored)" not in first and "measured on the val split" in first
    store = _store(trained_run)
    assert sorted(entry["protocol"] for entry in store["results"].values()) == ["knn", "rankme", "svm"]
    assert {entry["step"] for entry in store["results"].values()} == {2}
    assert {entry["weights"] for entry in store["results"].values()} == {"pretrained"}

    assert _all(trained_run, demo_masked_shards) == 0
    second = capsys.readouterr().out
    rows = [line for line in second.splitlines() if line.split()[:1] in (["knn"], ["svm"], ["rankme"])]
    assert len(rows) == 4 and all(line.endswith("(stored)") for line in rows)
    assert _store(trained_run)["results"] == store["results"]  # nothing measured again

    events = EventAccumulator(str(trained_run / "tensorboard" / "eval"))
    events.Reload()
    knn = next(entry for entry in store["results"].values() if entry["protocol"] == "knn")["result"]
    assert [(event.step, round(event.value, 4)) for event in events.Scalars("knn/top1")] == [(2, round(knn["top1"], 4))]
    assert {"svm/mAP", "svm/top1", "rankme/effective_rank"} <= set(events.Tags()["scalars"])


def test_other_options_are_other_results_and_a_command_line_protocol_is_stored_too(trained_run, demo_masked_shards,
                                                                                     capsys):
    with OneTorchThread():
        assert main(["eval", "knn", "--checkpoint", str(trained_run), "--data", str(demo_masked_shards),
                     "--k", "5", "--json"]) == 0
    k5 = json.loads(capsys.readouterr().out)
    entries = [entry for entry in _store(trained_run)["results"].values() if entry["protocol"] == "knn"]
    assert sorted(entry["options"]["k"] for entry in entries) == [5, 20]
    assert next(entry for entry in entries if entry["options"]["k"] == 5)["result"]["top1"] == k5["top1"]


def test_random_init_is_compared_with_the_stored_pretrained_results(trained_run, demo_masked_shards, capsys):
    assert _all(trained_run, demo_masked_shards) == 0
    capsys.readouterr()
    assert _all(trained_run, demo_masked_shards, "--random-init") == 0
    table = capsys.readouterr().out
    assert "random-init       pretrained  difference" in table
    assert "pretrained beats random init on" in table and "of 3 compared measures" in table
    store = _store(trained_run)
    random_knn = next(entry for entry in store["results"].values()
                      if entry["protocol"] == "knn" and entry["weights"] == "random-init")["result"]["top1"]
    pretrained_knn = next(entry for entry in store["results"].values() if entry["protocol"] == "knn"
                          and entry["weights"] == "pretrained" and entry["options"]["k"] == 20)["result"]["top1"]
    row = next(line for line in table.splitlines() if line.lstrip().startswith("knn"))
    assert f"{random_knn:.1f}%" in row and f"{pretrained_knn:.1f}%" in row
    assert f"{random_knn - pretrained_knn:+.1f}" in row
    assert store["tables"]["step 2, random-init"]["rows"][0]["protocol"] == "knn"


def test_the_plan_follows_what_the_data_supports(trained_run, demo_shards, demo_masked_shards):
    def names(data):
        session = EvaluationSession(EvaluationTarget(trained_run, data))
        return [(name, options.get("per_class"), options.get("label_fraction")) for name, options
                in planned_protocols(session)]

    plain, masked = names(demo_shards), names(demo_masked_shards)
    assert ("segment", None, None) in masked and ("segment", None, None) not in plain
    assert [entry for entry in plain if entry[0] == "low-shot"] == [("low-shot", size, None) for size in (1, 2, 4, 8)]
    assert [entry for entry in plain if entry[0] == "finetune"] == [("finetune", None, 0.01), ("finetune", None, 0.1)]
    assert [entry[0] for entry in plain] == ["knn", "linear", "svm"] + ["low-shot"] * 4 + ["finetune"] * 2 + ["rankme"]


def test_a_run_folder_that_cannot_be_written_still_gets_its_measurement(trained_run, demo_masked_shards,
                                                                          monkeypatch, capsys):
    import selfsup.trainer.protocols as protocols

    def refuse(*arguments, **options):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(protocols, "save_result", refuse)
    session = EvaluationSession(EvaluationTarget(trained_run, demo_masked_shards))
    with OneTorchThread():
        result, reused = protocols.run_protocol(session, "rankme", {})
    assert not reused and result["effective_rank"] > 1.0 and result["samples"] == 120
    assert capsys.readouterr().err.strip() == f"selfsup: warning: {trained_run}: result not stored (Permission denied)"
