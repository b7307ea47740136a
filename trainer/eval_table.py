"""The table `selfsup eval all` prints: one row per measure of every protocol run, beside the
same measure of the other weights (pretrained or random-init) when `RUN/eval.json` holds it."""

from __future__ import annotations

from selfsup.trainer.eval_store import read_results, result_key

# protocol -> (result key, measure name, is a percentage, compared: higher is better)
MEASURES = {
    "knn": [("top1", "top-1", True, True)],
    "linear": [("top1", "top-1", True, True)],
    "svm": [("mAP", "mAP", True, True), ("top1", "top-1", True, True)],
    "low-shot": [("mAP", "mAP", True, True)],
    "finetune": [("top1", "top-1", True, True)],
    "segment": [("mIoU", "mIoU", True, True), ("pixel_accuracy", "pixel acc", True, True)],
    "rankme": [("effective_rank", "effective rank", False, False)],
}


def label(name: str, options: dict) -> str:
    """A protocol's name in tables and TensorBoard tags: 'finetune 1%', 'low-shot k=4', 'svm'."""
    if name == "finetune":
        return f"finetune {100 * options['label_fraction']:g}%"
    if name == "low-shot":
        return f"low-shot k={options['per_class']}"
    if name == "segment":
        return f"segment {options['head']}"
    return name


def counterpart(weights: str) -> str:
    """The weights a result is compared with: random-init for pretrained ones, and back."""
    return "pretrained" if weights == "random-init" else "random-init"


def table_rows(session, measured: list[tuple[str, dict, dict, bool]]) -> list[dict]:
    """Rows for (name, options, result, reused) of every protocol run in `session`."""
    stored = read_results(session.run)["results"]
    other = counterpart(session.weights)
    rows = []
    for name, options, result, reused in measured:
        key = result_key(session.step, other, name, {**session.common_options(), **options})
        other_result = stored.get(key, {}).get("result")
        for field, measure, percent, compared in MEASURES[name]:
            rows.append({"protocol": label(name, options), "measure": measure, "value": result.get(field),
                         "std": result.get(f"{field}_std"), "percent": percent, "compared": compared,
                         "reused": reused, "eval_split": result.get("eval_split") or result.get("query_split"),
                         session.weights: result.get(field),
                         other: other_result.get(field) if other_result else None})
    return rows


def _cell(value, std, percent: bool) -> str:
    if value is None:
        return "-"
    text = f"{value:.1f}" + (f" ± {std:.1f}" if std is not None else "")
    return text + ("%" if percent else "")


def format_table(session, rows: list[dict]) -> str:
    """The printed table: this session's weights, the other's when stored, and the difference."""
    other = counterpart(session.weights)
    show_other = any(row[other] is not None for row in rows)
    held_out = (f"test set {session.test.root}" if session.test else
                "the val split" if "val" in session.dataset.splits else "the train split")
    lines = [f"{session.run} step {session.step} ({session.weights}) on {session.dataset.root}, "
             f"measured on {held_out}"]
    header = f"  {'protocol':<18s} {'measure':<15s} {session.weights:>16s}"
    if show_other:
        header += f" {other:>16s} {'difference':>11s}"
    lines += [header, "  " + "-" * (len(header) - 2)]
    for row in rows:
        line = (f"  {row['protocol']:<18s} {row['measure']:<15s} "
                f"{_cell(row['value'], row['std'], row['percent']):>16s}")
        if show_other:
            line += f" {_cell(row[other], None, row['percent']):>16s}"
            if row[other] is not None and row["value"] is not None:
                difference = row["value"] - row[other]
                line += f" {difference:>+11.1f}"
        if row["reused"]:
            line += "  (stored)"
        lines.append(line)
    if show_other:
        compared = [row for row in rows if row["compared"] and row["pretrained"] is not None
                    and row["random-init"] is not None]
        wins = sum(1 for row in compared if row["pretrained"] > row["random-init"])
        lines.append(f"  pretrained beats random init on {wins} of {len(compared)} compared measures")
    return "\n".join(lines)
