"""`selfsup eval plot`: a 2-D map of embeddings coloured by label, drawn as a PNG with PIL.

The points come from a parquet file of `selfsup embed`, or are computed from a checkpoint on
one split of a converted dataset (then the picture also goes to the run's TensorBoard, under
`tensorboard/eval`). At most `max_points` are drawn at random (seeded), read row group by row
group so a large file is never held whole. The map is t-SNE (van der Maaten & Hinton 2008, from
scikit-learn: PCA initialization, perplexity 30 or less for few points) or UMAP (McInnes et al.
2018, when the `umap-learn` package is installed), on L2-normalized embeddings.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from selfsup.errors import ConfigError, DatasetError

# 20 well-separated colours (the "tab20" palette's order: dark then light of each hue)
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207), (174, 199, 232), (255, 187, 120),
           (152, 223, 138), (255, 152, 150), (197, 176, 213), (196, 156, 148), (247, 182, 210), (199, 199, 199),
           (219, 219, 141), (158, 218, 229)]
UNLABELED = (90, 90, 90)


def read_embeddings(path: str | Path, max_points: int, seed: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(M, D) embeddings, (M,) labels (-1: none) and the class names of at most `max_points`
    rows of an embeddings parquet file drawn at random."""
    import pyarrow.parquet as parquet

    try:
        file = parquet.ParquetFile(path)
    except (OSError, ValueError) as error:
        raise DatasetError(f"{path}: cannot read the embeddings file ({error})") from error
    if "embedding" not in file.schema_arrow.names:
        raise DatasetError(f"{path}: no 'embedding' column; expected a file written by `selfsup embed`")
    total = file.metadata.num_rows
    chosen = np.sort(np.random.default_rng(seed).permutation(total)[:max_points]) if total > max_points else None
    embeddings, labels, names, offset = [], [], {}, 0
    for batch in file.iter_batches(columns=["embedding", "label", "label_name"], batch_size=8192):
        rows = np.arange(offset, offset + batch.num_rows)
        keep = np.isin(rows, chosen) if chosen is not None else np.ones(batch.num_rows, dtype=bool)
        offset += batch.num_rows
        if not keep.any():
            continue
        values = batch.column("embedding").flatten().to_numpy(zero_copy_only=False)
        embeddings.append(values.reshape(batch.num_rows, -1)[keep])
        batch_labels = np.array([-1 if value is None else value for value in batch.column("label").to_pylist()])
        labels.append(batch_labels[keep])
        for label, name in zip(batch_labels, batch.column("label_name").to_pylist()):
            if label >= 0 and name is not None:
                names[int(label)] = name
    if not embeddings:
        raise DatasetError(f"{path}: holds no embeddings")
    classes = [names.get(index, str(index)) for index in range(max(names, default=-1) + 1)]
    return np.concatenate(embeddings), np.concatenate(labels).astype(np.int64), classes


def two_dimensional(embeddings: np.ndarray, method: str = "tsne", seed: int = 0) -> np.ndarray:
    """(N, D) -> (N, 2) t-SNE or UMAP coordinates of the L2-normalized embeddings."""
    if len(embeddings) < 3:
        raise DatasetError(f"a 2-D map needs at least 3 embeddings, got {len(embeddings)}")
    data = embeddings / (np.linalg.norm(embeddings, axis=1, keepdims=True) + 1e-10)
    if method == "umap":
        try:
            import umap
        except ImportError:
            raise ConfigError("--method umap needs the umap-learn package (pip install umap-learn); "
                              "or use --method tsne") from None
        return umap.UMAP(n_components=2, random_state=seed).fit_transform(data)
    if method != "tsne":
        raise ConfigError(f"--method {method!r}: expected tsne or umap")
    from sklearn.manifold import TSNE

    perplexity = min(30.0, (len(data) - 1) / 3)
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(data)


def draw_map(points: np.ndarray, labels: np.ndarray, classes: list[str], title: str, size: int = 800):
    """A PIL image: the points scaled into a square, a legend of the classes on the right."""
    from PIL import Image, ImageDraw

    legend = 170 if classes else 0
    picture = Image.new("RGB", (size + legend, size), (255, 255, 255))
    draw = ImageDraw.Draw(picture)
    low, high = points.min(axis=0), points.max(axis=0)
    scaled = (points - low) / np.maximum(high - low, 1e-9) * (size - 40) + 20
    radius = 3 if len(points) < 2000 else 2
    for (x, y), label in zip(scaled, labels):
        colour = PALETTE[label % len(PALETTE)] if label >= 0 else UNLABELED
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=colour)
    draw.text((10, 4), title, fill=(0, 0, 0))
    for index, name in enumerate(classes[:40]):
        y = 24 + 16 * index
        draw.rectangle([size + 8, y, size + 18, y + 10], fill=PALETTE[index % len(PALETTE)])
        draw.text((size + 24, y - 1), name[:22], fill=(0, 0, 0))
    return picture


def _checkpoint_embeddings(checkpoint, data, split, weights, random_init, max_points, seed, device):
    """(embeddings, labels, classes, split, step, run folder) of a checkpoint's backbone on one split."""
    import torch

    from selfsup.pipeline.dataset import load_dataset_info
    from selfsup.trainer.eval_store import run_folder
    from selfsup.trainer.evaluate import extract_features, load_backbone
    from selfsup.trainer.resume import find_checkpoint

    if data is None:
        raise ConfigError("eval plot: --checkpoint needs --data (a converted dataset)")
    path = find_checkpoint(checkpoint)
    backbone, config = load_backbone(path, random_init=random_init, weights=weights)
    dataset = load_dataset_info(data)
    split = split or ("val" if "val" in dataset.splits else "train")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    features, labels = extract_features(backbone, dataset, split, config.data.image_size, config.eval.batch_size,
                                        device)
    if not dataset.labeled:
        labels = torch.full_like(labels, -1) if len(labels) else labels
    if len(features) > max_points:
        chosen = np.sort(np.random.default_rng(seed).permutation(len(features))[:max_points])
        features, labels = features[chosen], labels[chosen]
    step = int(path.name[5:]) if path.name.startswith("step-") and path.name[5:].isdigit() else 0
    return features.numpy(), labels.numpy(), list(dataset.classes), split, step, run_folder(path)


def plot_embeddings(output: str | Path, *, embeddings: str | Path | None = None, checkpoint: str | Path | None = None,
                    data: str | Path | None = None, split: str | None = None, weights: str = "student",
                    random_init: bool = False, method: str = "tsne", max_points: int = 5000, seed: int = 0,
                    device: str | None = None) -> dict:
    """Draw the 2-D map into the PNG `output`; returns {"output", "method", "points", "labels"}."""
    if (embeddings is None) == (checkpoint is None):
        raise ConfigError("eval plot: give either --embeddings FILE.parquet or --checkpoint RUN --data OUT")
    if max_points < 3:
        raise ConfigError(f"--max-points {max_points}: expected at least 3")
    run = None
    if embeddings is not None:
        vectors, labels, classes = read_embeddings(embeddings, max_points, seed)
        title = f"{method} of {len(vectors)} embeddings from {Path(embeddings).name}"
    else:
        vectors, labels, classes, split, step, run = _checkpoint_embeddings(
            checkpoint, data, split, weights, random_init, max_points, seed, device)
        title = f"{method} of {len(vectors)} {split} embeddings, step {step}" + (" (random init)" if random_init else "")
    picture = draw_map(two_dimensional(vectors, method, seed), labels, classes, title)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    picture.save(partial, format="PNG")
    partial.replace(output)
    if run is not None:
        from selfsup.trainer.eval_store import EvalWriter

        writer = EvalWriter(run)
        writer.image(step, f"{'random_init/' if random_init else ''}embeddings/{method}", picture)
        writer.close()
    return {"output": str(output), "method": method, "points": len(vectors), "labels": len(set(labels.tolist()) - {-1})}
