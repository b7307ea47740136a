"""`selfsup embed`: one parquet row per image with its backbone embedding, streamed.

Rows (`EMBEDDING_COLUMNS`): `key` (the sample key; for a folder, the image's path relative to
it), `split` (null for a folder), `source` (the image's path relative to the converted folder's
source, or to the folder), `label` and `label_name` (null without labels) and `embedding`, a
fixed-size list of D float32 values: the eval recipe's view (resize, center crop) through the
backbone, exactly what `trainer.evaluate.extract_features` computes.

Batches are written out in row groups of `rows_per_group` as they come, so memory stays bounded
by a row group of embeddings plus the manifest's key, source and label columns, however many
images there are. The file appears under its name only when complete (written as `.partial`,
then renamed).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from selfsup.errors import DatasetError
from selfsup.files import sync_folder
from selfsup.pipeline.dataset import MANIFEST_FILE, DatasetInfo, load_dataset_info
from selfsup.pipeline.recipes import EvalRecipe

EMBEDDING_COLUMNS = ("key", "split", "source", "label", "label_name", "embedding")


def _schema(dimension: int):
    import pyarrow

    return pyarrow.schema([("key", pyarrow.string()), ("split", pyarrow.string()), ("source", pyarrow.string()),
                           ("label", pyarrow.int32()), ("label_name", pyarrow.string()),
                           ("embedding", pyarrow.list_(pyarrow.float32(), dimension))])


class EmbeddingWriter:
    """Rows into `output` (`output.partial` until `finish`), one row group per `rows_per_group` rows."""

    def __init__(self, output: Path, dimension: int, rows_per_group: int):
        import pyarrow.parquet as parquet

        self.output, self.dimension, self.rows_per_group = output, dimension, rows_per_group
        output.parent.mkdir(parents=True, exist_ok=True)
        self.partial = output.with_name(output.name + ".partial")
        self.writer = parquet.ParquetWriter(self.partial, _schema(dimension))
        self.pending: dict[str, list] = {name: [] for name in EMBEDDING_COLUMNS}
        self.rows = 0

    def add(self, columns: dict[str, list], embeddings: np.ndarray) -> None:
        for name in EMBEDDING_COLUMNS[:-1]:
            self.pending[name].extend(columns[name])
        self.pending["embedding"].append(np.asarray(embeddings, dtype=np.float32).reshape(-1, self.dimension))
        while len(self.pending["key"]) >= self.rows_per_group:
            self._flush(self.rows_per_group)

    def _flush(self, count: int | None = None) -> None:
        """Write the first `count` pending rows (all when None) as one row group."""
        import pyarrow

        count = len(self.pending["key"]) if count is None else count
        if count == 0:
            return
        values = np.concatenate(self.pending["embedding"])
        embedding = pyarrow.FixedSizeListArray.from_arrays(
            pyarrow.array(values[:count].reshape(-1), pyarrow.float32()), self.dimension)
        schema = _schema(self.dimension)
        arrays = [pyarrow.array(self.pending[name][:count], type=field.type)
                  for name, field in zip(EMBEDDING_COLUMNS[:-1], schema)] + [embedding]
        self.writer.write_table(pyarrow.Table.from_arrays(arrays, schema=schema))
        self.rows += count
        self.pending = {name: self.pending[name][count:] for name in EMBEDDING_COLUMNS[:-1]}
        self.pending["embedding"] = [values[count:]]

    def finish(self) -> int:
        self._flush()
        self.writer.close()
        with open(self.partial, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(self.partial, self.output)
        sync_folder(self.output.parent)
        return self.rows

    def abort(self) -> None:
        self.writer.close()
        self.partial.unlink(missing_ok=True)


def _manifest_columns(dataset: DatasetInfo, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The split's keys, sources and labels in reading order (sorted keys), from the manifest."""
    import pyarrow.compute as compute
    import pyarrow.parquet as parquet

    path = dataset.root / MANIFEST_FILE
    try:
        table = parquet.read_table(path, columns=["key", "split", "source", "label"])
    except (OSError, ValueError) as error:
        raise DatasetError(f"{path}: cannot read the manifest ({error})") from error
    table = table.filter(compute.equal(table["split"], split))
    keys = np.asarray(table["key"].to_pylist(), dtype=object)
    order = np.argsort(keys.astype(str), kind="stable")
    return (keys[order], np.asarray(table["source"].to_pylist(), dtype=object)[order],
            np.asarray(table["label"].to_numpy(zero_copy_only=False), dtype=np.int64)[order])


def _embed_split(backbone, dataset: DatasetInfo, split: str, recipe: EvalRecipe, writer: EmbeddingWriter,
                 batch_size: int, device: torch.device, bar) -> None:
    from selfsup.pipeline.embedding_loaders import build_indexed_eval_loader

    keys, sources, labels = _manifest_columns(dataset, split)
    loader = build_indexed_eval_loader(dataset, recipe, batch_size=batch_size, split=split, device=device)
    try:
        for batch in loader:
            positions = batch["index"].numpy()
            embeddings = backbone(batch["image"].to(device)).float().cpu().numpy()
            rows = labels[positions]
            if "label" in batch and not np.array_equal(batch["label"].numpy(), rows):
                raise DatasetError(f"{dataset.root}: the shards' labels differ from {MANIFEST_FILE}; run "
                                   f"`selfsup verify {dataset.root}`")
            writer.add({"key": keys[positions].tolist(), "split": [split] * len(positions),
                        "source": sources[positions].tolist(),
                        "label": [int(value) if value >= 0 else None for value in rows],
                        "label_name": [dataset.classes[value] if value >= 0 else None for value in rows]},
                       embeddings)
            bar.update(len(positions))
    finally:
        loader.close()


def _embed_folder(backbone, folder: Path, recipe: EvalRecipe, writer: EmbeddingWriter, batch_size: int,
                  device: torch.device, bar, skipped: list[dict]) -> None:
    from selfsup.pipeline.source_scan import scan_source
    from selfsup.pipeline.embedding_loaders import build_folder_loader

    scan = scan_source(Path(folder))
    files, labeled, classes = scan.files, scan.labeled, scan.classes
    loader = build_folder_loader(folder, files, recipe, batch_size=batch_size, device=device, skipped=skipped)
    try:
        for batch in loader:
            positions = batch["index"].reshape(-1).numpy()
            embeddings = backbone(batch["image"].to(device)).float().cpu().numpy()
            names = [files[position] for position in positions]
            class_names = [name.split("/", 1)[0] if labeled else None for name in names]
            writer.add({"key": names, "split": [None] * len(names), "source": names,
                        "label": [classes.index(name) if name else None for name in class_names],
                        "label_name": class_names}, embeddings)
            bar.update(int(positions.max()) + 1 - bar.n)  # files read so far, the skipped ones too
    finally:
        loader.close()


def count_folder_images(folder: Path) -> int:
    from selfsup.pipeline.source_scan import scan_source

    return len(scan_source(Path(folder)).files)


@torch.no_grad()
def embed_images(backbone: torch.nn.Module, output: str | Path, *, data: str | Path | None = None,
                 images: str | Path | None = None, splits: list[str] | None = None, image_size: int,
                 batch_size: int = 256, device: str | torch.device = "cpu", rows_per_group: int = 4096,
                 progress: bool = False) -> dict:
    """Write the embeddings of every image of `data` (a converted dataset; `splits`, default all)
    or of `images` (a folder of images, class folders giving labels) to the parquet file `output`."""
    from tqdm import tqdm

    if (data is None) == (images is None):
        raise DatasetError("embed: give either a converted dataset (--data) or a folder of images (--images)")
    device = torch.device(device)
    backbone.eval().to(device)
    recipe, output, skipped = EvalRecipe(size=image_size), Path(output), []
    writer = EmbeddingWriter(output, int(backbone.feature_dim), rows_per_group)
    try:
        if data is not None:
            dataset = load_dataset_info(data)
            chosen = splits or list(dataset.splits)
            total = sum(dataset.split(split).count for split in chosen)
            with tqdm(total=total, desc="embed", unit="img", disable=not progress, dynamic_ncols=True) as bar:
                for split in chosen:
                    _embed_split(backbone, dataset, split, recipe, writer, batch_size, device, bar)
            source = str(dataset.root)
        else:
            folder = Path(images).expanduser().resolve()
            if not folder.is_dir():
                raise DatasetError(f"{folder}: no such folder of images")
            total = count_folder_images(folder)
            if total == 0:
                raise DatasetError(f"{folder}: no images found")
            with tqdm(total=total, desc="embed", unit="img", disable=not progress, dynamic_ncols=True) as bar:
                _embed_folder(backbone, folder, recipe, writer, batch_size, device, bar, skipped)
            source = str(folder)
    except BaseException:
        writer.abort()
        raise
    rows = writer.finish()
    return {"output": str(output), "rows": rows, "dimension": int(backbone.feature_dim), "source": source,
            "skipped": skipped}
