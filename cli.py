"""Command-line entry point: data, features, store, train, evaluate, classify, reproduce.

Every command turns `UserError` into one line on stderr and exit code 1, so a user mistake
never shows a traceback. Heavy imports (torch, dask) happen inside the commands that need
them, so `--help` and `data validate` answer at once.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from extract.errors import UserError
from pipeline.atomic import json_text
from pipeline.datasets.obtain import GENERATED
from pipeline.remote.urls import Location, as_location

DATASET = os.environ.get("DATASET", "toy")
MANIFEST_KINDS = ("ucf101", "hmdb51", "kinetics400", "folder")


class PathOrUrl(click.ParamType):
    """A local path (a `Path`) or an fsspec URL such as s3://bucket/name.zarr (kept as text:
    `Path` would fold `s3://` into `s3:/`)."""

    name = "path or URL"

    def convert(self, value: object, param: object, ctx: object) -> Location:
        return value if isinstance(value, Path) else as_location(str(value))


PATH_OR_URL = PathOrUrl()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Attention Clusters video classification: features, training and inference."""


@main.group()
def data() -> None:
    """Generate, download and validate datasets."""


@data.command("generate")
@click.argument("name", type=click.Choice(GENERATED))
@click.option("--out", type=click.Path(path_type=Path), help="Output folder [data/NAME].")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--videos", type=click.IntRange(min=1),
              help="toy: number of clips; flash-mnist: training videos per class.")
@click.option("--mnist-dir", type=click.Path(path_type=Path),
              help="flash-mnist: folder with MNIST's IDX files [scikit-learn's digits].")
@click.option("--source", type=click.Choice(("auto", "mnist", "sklearn", "download")),
              default="auto", show_default=True,
              help="flash-mnist digits: auto = MNIST when --mnist-dir is given, else sklearn.")
def data_generate(name: str, out: Path | None, seed: int, videos: int | None,
                  mnist_dir: Path | None = None, source: str = "auto") -> None:
    """Write a generated dataset (offline, deterministic for a seed)."""
    from pipeline.datasets.obtain import generate_dataset

    path = generate_dataset(name, out or Path("data") / name, seed, videos, mnist_dir, source)
    click.echo(f"wrote {name} to {path}")


@data.command("get")
@click.argument("name")
@click.option("--out", type=click.Path(path_type=Path), help="Output folder [data/NAME].")
def data_get(name: str, out: Path | None) -> None:
    """Generate (toy, flash-mnist) or download (ucf101, hmdb51, kinetics400) a dataset."""
    from pipeline.datasets.obtain import get_dataset

    path, made = get_dataset(name, out or Path("data") / name)
    if not made:
        click.echo(f"{name} is already in {path} (`cli.py data generate {name}` remakes it)")
    elif name in GENERATED:
        click.echo(f"wrote {name} to {path}")
    else:
        click.echo(f"{name} is in {path}")


@data.command("validate")
@click.argument("kind", type=click.Choice(MANIFEST_KINDS))
@click.option("--root", required=True, type=click.Path(path_type=Path), help="Dataset folder.")
@click.option("--splits", type=click.Path(path_type=Path),
              help="Folder of the official split files, when not inside the root.")
def data_validate(kind: str, root: Path, splits: Path | None) -> None:
    """Check a dataset against its official layout: classes, splits, missing files."""
    from pipeline.datasets.manifest import validate_command

    text, valid = validate_command(kind, root, splits)
    click.echo(text)
    if not valid:
        sys.exit(1)


def _dataset_paths(dataset: str, root: Location | None, out: Location | None
                   ) -> tuple[Location, Location]:
    return root or Path("data") / dataset, out or Path("features") / f"{dataset}.zarr"


@main.command()
@click.argument("dataset", default=DATASET)
@click.option("--root", type=PATH_OR_URL,
              help="Dataset folder or URL (s3://bucket/ucf101) [data/DATASET].")
@click.option("--config", "config", help="Profile name or YAML path [configs/DATASET.yaml, "
              "else configs/default.yaml].")
@click.option("--kind", type=click.Choice(MANIFEST_KINDS),
              help="Dataset layout [the profile's dataset.kind].")
@click.option("--splits", type=click.Path(path_type=Path),
              help="Folder of the official split files, when not inside the root.")
@click.option("--out", type=PATH_OR_URL,
              help="Store, a path or URL (s3://bucket/x.zarr) [features/DATASET.zarr].")
@click.option("--workers", type=click.IntRange(min=1), help="Local Dask workers [one per core].")
@click.option("--scheduler", help="Address of an existing Dask scheduler (tcp://host:8786).")
@click.option("--device", type=click.Choice(("auto", "cpu", "cuda")), default="auto",
              show_default=True)
@click.option("--limit", type=click.IntRange(min=1), help="Only N videos, spread over the set.")
@click.option("--overwrite", is_flag=True, help="Recompute rows that are already done.")
@click.option("--repair", is_flag=True, help="Read every chunk of the store first and recompute "
              "the rows whose data is damaged (missing chunks are always recomputed).")
@click.option("--strict", is_flag=True, help="Exit 1 if any video failed.")
@click.option("--flush-seconds", type=click.FloatRange(min=0), default=30.0, show_default=True,
              help="Write finished videos to the store at least this often.")
@click.option("--json", "as_json", is_flag=True, help="Print the store summary as JSON.")
@click.option("--cooperate", is_flag=True, help="Fill the store together with other "
              "`features --cooperate` runs (other machines), rows claimed with leases.")
@click.option("--lease-seconds", type=click.FloatRange(min=3), default=60.0, show_default=True,
              help="How long the lock or a lease of a dead run blocks others (object storage "
                   "and --cooperate).")
@click.option("--lease-rows", type=click.IntRange(min=1),
              help="Rows per lease with --cooperate (a power of two) [a shard's rows].")
@click.option("--gpu-workers", type=click.IntRange(min=0), help="Local workers running flow and "
              "CNNs for --gpu-batch videos at once, one GPU each, while the others decode [one "
              "per GPU with CUDA; --scheduler: its workers started with --resources GPU=1].")
@click.option("--gpu-batch", type=click.IntRange(min=1), default=8, show_default=True)
def features(dataset: str, root: Location | None, config: str | None, kind: str | None,
             splits: Path | None, out: Location | None, workers: int | None, scheduler: str | None,
             device: str, limit: int | None, overwrite: bool, strict: bool,
             flush_seconds: float, as_json: bool, repair: bool = False, cooperate: bool = False,
             lease_seconds: float = 60.0, lease_rows: int | None = None,
             gpu_workers: int | None = None, gpu_batch: int = 8) -> None:
    """Extract RGB, flow and audio features of every video of DATASET into a Zarr store.

    Rerunning the same command resumes: finished videos are not recomputed.
    """
    from pipeline.features.dask_runner import format_run_summary
    from pipeline.features.run import run_features
    from pipeline.store.summary import format_summary, summarize

    root, out = _dataset_paths(dataset, root, out)
    result = run_features(
        kind=kind, root=root, profile=config, out=out,
        dataset=dataset, splits_dir=splits, workers=workers, scheduler=scheduler,
        device=device, limit=limit, overwrite=overwrite, flush_seconds=flush_seconds,
        repair=repair, cooperate=cooperate, lease_s=lease_seconds, lease_rows=lease_rows,
        gpu_workers=gpu_workers, gpu_batch=gpu_batch,
    )
    if result.run.interrupted:  # one line: the rows handed back so far are flushed
        written, listed = result.written()
        click.echo(f"interrupted: {written} of {listed} videos written to {out}; rerun the "
                   f"same command to resume", err=True)
        sys.exit(130)
    summary = summarize(result.store)
    if result.damage is not None:
        click.echo(result.damage.note(), err=True)
    if result.relisting is not None:
        click.echo(result.relisting.describe(), err=as_json)
    click.echo(format_run_summary(result.run), err=as_json)
    if result.skipped_missing:
        click.echo(f"note: {result.skipped_missing} listed videos are missing on disk",
                   err=True)
    if result.left_to_others:
        click.echo(f"note: {result.left_to_others} rows computed here were left to the run "
                   f"that took their block over (this run was stalled past its lease)",
                   err=True)
    if result.skipped_unsafe:
        click.echo(f"note: {result.skipped_unsafe} list entries lead outside {root} and were "
                   f"not read (`cli.py data validate` lists them)", err=True)
    if result.skipped_unreadable:
        click.echo(f"note: {result.skipped_unreadable} entries under {root} cannot be read and "
                   f"were skipped (`cli.py data validate` lists them)", err=True)
    click.echo(json_text(summary) if as_json else format_summary(summary))
    failed = sum(m["counts"]["failed"] for m in summary["modalities"].values())
    done = sum(m["counts"]["done"] for m in summary["modalities"].values())
    if done == 0:
        raise UserError(_no_features(summary, out))
    if strict and failed:
        sys.exit(1)


def _no_features(summary: dict, out: Location) -> str:
    """Why a run that computed nothing usable is not a success, with the counts."""
    counts = "; ".join(
        f"{name}: " + ", ".join(f"{n} {label}" for label, n in info["counts"].items() if n)
        for name, info in summary["modalities"].items())
    if any(info["counts"]["failed"] for info in summary["modalities"].values()):
        return (f"all {summary['videos']} videos failed ({counts}): see `cli.py store info "
                f"{out}` for the errors")
    return f"none of the {summary['videos']} videos has features ({counts})"


@main.group()
def store() -> None:
    """Inspect feature stores."""


@store.command("info")
@click.argument("path", type=PATH_OR_URL)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--verify", is_flag=True, help="Read every chunk: report the damaged rows per "
              "modality, exit 1 if any.")
def store_info(path: Location, as_json: bool, verify: bool = False) -> None:
    """Counts per modality and status, failures with their errors, the extraction config."""
    from pipeline.store.summary import format_summary, read_summary

    if verify:
        from pipeline.store.feature_store import open_store
        from pipeline.store.verify import find_damage

        report = find_damage(open_store(path), full=True, progress=not as_json)
        click.echo(json_text(report.to_json()) if as_json else report.describe())
        sys.exit(1 if report.damaged else 0)
    summary = read_summary(path)
    click.echo(json_text(summary) if as_json else format_summary(summary))


def _store_for(dataset: str, store_path: Location | None) -> Location:
    return store_path or Path("features") / f"{dataset}.zarr"


@main.command()
@click.option("--dataset", default=DATASET, show_default=True, help="Dataset name.")
@click.option("--features", "store_path", type=PATH_OR_URL,
              help="Feature store, a path or URL [features/DATASET.zarr].")
@click.option("--out", type=click.Path(path_type=Path),
              help="Run folder [runs/DATASET/<timestamp>].")
@click.option("--split", default="1", show_default=True,
              help="Official split to train on (1-based), or 'all' for one model per split.")
@click.option("--epochs", type=click.IntRange(min=1), help="[the profile's train.epochs]")
@click.option("--batch-size", type=click.IntRange(min=1), help="[the profile's]")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), help="[the profile's]")
@click.option("--modalities", help="Comma-separated subset, e.g. rgb,audio [all in the store].")
@click.option("--seed", type=int, help="[the profile's train.seed]")
@click.option("--config", "config", help="Profile with a train: section [configs/DATASET.yaml].")
@click.option("--device", type=click.Choice(("auto", "cpu", "cuda")), default="auto",
              show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def train(dataset: str, store_path: Location | None, out: Path | None, split: str,
          epochs: int | None, batch_size: int | None, lr: float | None,
          modalities: str | None, seed: int | None, config: str | None, device: str,
          as_json: bool) -> None:
    """Train the Attention Clusters classifier on a feature store."""
    from pipeline.train.splits import train_splits

    overrides = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if modalities:
        overrides["modalities"] = [m.strip() for m in modalities.split(",") if m.strip()]
    overrides.update(device=device, progress=not as_json)
    results = train_splits(_store_for(dataset, store_path), dataset, split, config, overrides,
                           out)
    if as_json:
        payload = [result.to_json() for result in results]
        click.echo(json_text(payload[0] if len(payload) == 1 else payload))
        return
    for result in results:
        best = result.best_metrics
        headline = ", ".join(f"{k} {v:.3f}" for k, v in best.items()
                             if k in ("top1", "top5", "mean_class_accuracy", "gap", "map"))
        click.echo(f"split {result.split}: best epoch {result.best_epoch} of {result.epochs} "
                   f"({result.steps} optimiser steps): {headline}")
        click.echo(f"checkpoint: {result.checkpoint}")


@main.command()
@click.argument("dataset", default=DATASET)
@click.option("--modality", required=True, help="rgb or flow: the backbone to fine-tune.")
@click.option("--root", type=click.Path(path_type=Path), help="[data/DATASET]")
@click.option("--config", "config", help="Profile [configs/DATASET.yaml, else default].")
@click.option("--kind", type=click.Choice(MANIFEST_KINDS), help="[the profile's]")
@click.option("--splits", type=click.Path(path_type=Path), help="Folder of the split files.")
@click.option("--split", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), help="[runs/DATASET/finetune-...]")
@click.option("--epochs", type=click.IntRange(min=1), default=6, show_default=True)
@click.option("--segments", type=click.IntRange(min=1), default=3, show_default=True,
              help="TSN's K: snippets per video in each training step.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), help="[0.001 rgb, 0.005 flow]")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", type=click.Choice(("auto", "cpu", "cuda")), default="auto",
              show_default=True)
@click.option("--max-videos", type=click.IntRange(min=1), help="At most N train + N val.")
@click.option("--json", "as_json", is_flag=True, help="Print the record as JSON.")
def finetune(dataset: str, modality: str, root: Path | None, config: str | None,
             kind: str | None, splits: Path | None, split: int, out: Path | None, epochs: int,
             segments: int, batch_size: int, lr: float | None, seed: int, device: str,
             max_videos: int | None, as_json: bool) -> None:
    """Fine-tune the profile's RGB or flow backbone TSN-style (docs/backbones.md); rerun to
    resume. Writes MODALITY.pth, its sha256 and finetune.json for `backbone.weights_file`."""
    from pipeline.finetune.outputs import summary_text
    from pipeline.finetune.run import run_finetune
    from pipeline.finetune.settings import FinetuneSettings

    settings = FinetuneSettings(modality=modality, split=split, epochs=epochs,
                                segments=segments, batch_size=batch_size, lr=lr, seed=seed)
    out = out or Path("runs") / dataset / f"finetune-{modality}-split{split}"
    record = run_finetune(dataset=dataset, root=root or Path("data") / dataset,
                          modality=modality, out=out, profile=config, kind=kind,
                          splits_dir=splits, settings=settings, max_videos=max_videos,
                          device=device, progress=not as_json)
    if as_json:
        click.echo(json_text({k: v for k, v in record.items() if k != "identity"}))
        return
    click.echo(summary_text(record))


@main.command()
@click.option("--dataset", default=DATASET, show_default=True, help="Dataset name.")
@click.option("--checkpoint", type=click.Path(path_type=Path),
              help="Checkpoint [the newest under runs/DATASET].")
@click.option("--features", "store_path", type=PATH_OR_URL,
              help="Feature store, a path or URL [features/DATASET.zarr].")
@click.option("--split", help="Split to test on [the checkpoint's]; 'all' averages the "
              "newest checkpoint of each split.")
@click.option("--per-class", type=click.Path(path_type=Path), help="Write per-class CSV here.")
@click.option("--device", type=click.Choice(("auto", "cpu", "cuda")), default="auto",
              show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
def evaluate(dataset: str, checkpoint: Path | None, store_path: Location | None, split: str | None,
             per_class: Path | None, device: str, as_json: bool) -> None:
    """Test metrics of a checkpoint: top-1/top-5/mean class accuracy, or mAP/GAP/Hit@1/PERR."""
    from pipeline.train.splits import evaluate_dataset

    metrics = evaluate_dataset(dataset, _store_for(dataset, store_path), checkpoint, split,
                               device=device, per_class_csv=per_class)
    if as_json:
        click.echo(json_text(metrics))
    elif "mean" in metrics:
        click.echo(_metrics_line(metrics["mean"], "mean"))
    else:
        click.echo(_metrics_line(metrics, f"split {metrics['split']}"))


@main.command()
@click.argument("videos", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--dataset", default=DATASET, show_default=True,
              help="Dataset whose newest checkpoint is used.")
@click.option("--checkpoint", type=click.Path(path_type=Path),
              help="Checkpoint file [newest runs/DATASET/*/best.pt].")
@click.option("--top-k", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--device", type=click.Choice(("auto", "cpu", "cuda")), default="auto",
              show_default=True)
@click.option("--explain", type=click.Path(path_type=Path),
              help="Write the attention picture here (several videos: NAME-1.png, ...).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def classify(videos: tuple[Path, ...], dataset: str, checkpoint: Path | None, top_k: int,
             device: str, explain: Path | None, as_json: bool) -> None:
    """Classify videos with a trained checkpoint; --explain shows the moments that decided it."""
    from pipeline.inference.classify import classify_videos, format_table

    results = classify_videos(list(videos), checkpoint, top_k=top_k, device=device,
                              explain=explain, progress=not as_json, dataset=dataset)
    click.echo(json_text(results) if as_json else format_table(results))
    if any("error" in result for result in results):
        sys.exit(1)


@main.command()
@click.option("--quick", is_flag=True,
              help="A small version of the whole chain (about a minute) into "
                   "runs/flash-mnist-quick/ instead of docs/.")
@click.option("--epochs", type=int, help="Epochs per configuration [the authors' 100].")
@click.option("--precision",
              help="Training forward pass: auto (bf16 where it was shown harmless), fp32 or "
                   "bf16 [auto].")
@click.option("--sizes", help="Comma-separated cluster sizes [1,2,4,...,128].")
@click.option("--units", help="Comma-separated attention units [linear,mlp_shared].")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Training processes at once (each gets a share of the cores).")
@click.option("--source", default="sklearn", show_default=True,
              help="Digits: sklearn, mnist (needs --mnist-dir), download or auto.")
@click.option("--mnist-dir", type=click.Path(path_type=Path),
              help="Folder with MNIST's IDX files (the paper's digits).")
@click.option("--device", type=click.Choice(("auto", "cpu", "cuda")), default="auto",
              show_default=True)
@click.option("--data-dir", type=click.Path(path_type=Path), help="[data/flash-mnist]")
@click.option("--runs-dir", type=click.Path(path_type=Path), help="[runs/flash-mnist-grid]")
@click.option("--docs-dir", type=click.Path(path_type=Path), help="[docs]")
@click.option("--report-only", is_flag=True,
              help="Train nothing: rewrite docs/reproduction.md and the figures from the "
                   "results recorded so far.")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
def reproduce(quick: bool, epochs: int | None, precision: str | None, sizes: str | None,
              units: str | None, jobs: int, source: str, mnist_dir: Path | None, device: str,
              data_dir: Path | None, runs_dir: Path | None, docs_dir: Path | None,
              report_only: bool, no_progress: bool) -> None:
    """Reproduce the paper's Flash-MNIST ablation (cluster size x unit x shifting) as the
    authors ran it.

    Records every finished configuration in docs/reproduction.json at once and writes
    docs/reproduction.md and its figures; rerunning continues the grid where it stopped.
    """
    from pipeline.study.run import reproduce as run_study
    from pipeline.study.settings import settings_from_options

    if quick:
        quick_root = Path("runs/flash-mnist-quick")
        data_dir, runs_dir = data_dir or quick_root / "data", runs_dir or quick_root / "runs"
        docs_dir = docs_dir or quick_root / "docs"
    settings = settings_from_options(
        quick=quick, epochs=epochs, precision=precision, sizes=sizes, units=units,
        source=source, mnist_dir=mnist_dir, device=device, data_dir=data_dir,
        runs_dir=runs_dir, docs_dir=docs_dir, progress=not no_progress)
    report = run_study(settings, jobs=jobs, train_grid=not report_only)
    click.echo(f"{len(report['results'])} of {report['configurations']} configurations "
               f"finished; report in {settings.docs_dir / 'reproduction.md'}")


def _metrics_line(metrics: dict, where: str) -> str:
    names = {"top1": "top-1", "top5": "top-5", "mean_class_accuracy": "mean class accuracy",
             "map": "mAP", "gap": "GAP@20", "hit1": "Hit@1", "perr": "PERR"}
    shown = ", ".join(f"{label} {100 * metrics[key]:.1f}%" for key, label in names.items()
                      if key in metrics)
    return f"{where}: {shown} (n={metrics['n']})"


def run() -> None:
    """Run the CLI, turning user errors into one clear line and a non-zero exit."""
    try:
        code = main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except UserError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    run()
