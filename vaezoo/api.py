"""The Python API the CLI is a thin layer over: `build` a model from a recipe, `fit` it."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vaezoo.errors import RecipeError, RunFailed, UnknownName, VaezooError, checked_path
from vaezoo.files.atomic import write_bytes_atomic, write_text_atomic
from vaezoo.plugins.registry import split_name
from vaezoo.recipes.resolve import MAX_GRID_IMAGES, read_recipe_file, resolve_recipe
from vaezoo.recipes.toml_writer import dumps as toml_dumps

if TYPE_CHECKING:
    from torch import Tensor

    from vaezoo.components import Dataset, Model
    from vaezoo.trainer.run import Run


@dataclass
class FitResult:
    """What `fit` returns."""

    out_dir: Path
    metrics: dict[str, Any]
    model: Any
    stopped_early: str | None = None  # why train.early_stop_patience ended the run before its epochs


def make_dataset(
    recipe: Mapping[str, Any],
    data_dir: str | os.PathLike[str] | None = None,
    *,
    from_file: bool = False,
    paths: Mapping[str, str] | None = None,
) -> Dataset:
    """The recipe's dataset object, rooted at --data-dir / VAEZOO_DATA_DIR / the user folder. The
    dataset's path keys (`Dataset.path_keys`) name files or folders; a relative one is taken relative
    to that data root, never the current folder. For a recipe read from a model file (`from_file`), the
    path keys are dropped: a file never chooses what vaezoo reads; `paths` gives them explicitly (`eval
    --set dataset.path=...`), and may hold nothing else. The dataset's declared shape must be a
    `(C, H, W)` that a model file can hold (`vaezoo.files.model_header.shape_problem`)."""
    from vaezoo.data import checked_data_root, path_key_value
    from vaezoo.errors import PluginError
    from vaezoo.files.model_header import shape_problem
    from vaezoo.plugins.manager import get_registry
    from vaezoo.recipes.build import instantiate

    name = recipe["dataset"]["name"]
    target = get_registry().get("datasets", name).load()
    table = recipe["dataset"]
    path_keys = getattr(target, "path_keys", ())
    if from_file:
        table = {key: value for key, value in table.items() if key not in path_keys}
    for key, value in (paths or {}).items():
        if key not in path_keys or not isinstance(value, str):
            allowed = ", ".join(f"dataset.{k}" for k in path_keys) or "none"
            raise RecipeError(
                f"--set dataset.{key}: only the dataset's folder keys can be set here (dataset {name!r}: "
                f"{allowed}), as a string"
            )
        table = {**table, key: value}
    root = checked_data_root(data_dir)
    for key in path_keys:  # relative to the data root; an existing FIFO or symlink loop is one line
        if isinstance(table.get(key), str) and table[key]:
            value = checked_path(table[key], f"dataset.{key}")  # only spaces: one line
            table = {**table, key: str(path_key_value(root, value, f"dataset.{key}"))}
    dataset: Dataset = instantiate(target, table, {"root": root}, "dataset")
    problem = shape_problem(dataset.shape)
    if problem is not None:
        raise PluginError(f"dataset {name!r} declares shape {problem}")
    return dataset


def build(
    recipe: str | Path | Mapping[str, Any], sets: Iterable[str] = (), options: Mapping[str, Any] | None = None
) -> Model:
    """An untrained model (a `vaezoo.Model`) for a recipe name, recipe file or table (overrides as in
    `resolve_recipe`)."""
    from vaezoo.recipes.build import build_model

    resolved = resolve_recipe(recipe, sets, options)
    dataset = make_dataset(resolved)
    return build_model(resolved, dataset.shape, dataset.classes, read_model_files(resolved))


def read_model_files(recipe: Mapping[str, Any], saved: Path | None = None) -> dict[str, Any]:
    """The model files a recipe's family is built on (`Model.model_files`), each read once: key -> the
    loaded model and the record its model file keeps. `saved`: a resumed run's model.safetensors,
    whose records serve (the state holds the weights) when they name the same source."""
    from vaezoo.files.model_header import file_sha256, read_model_header
    from vaezoo.loading import load, rebuild
    from vaezoo.plugins.manager import get_registry
    from vaezoo.recipes.build import Dependency, model_file_keys
    from vaezoo.sharing.hub import local_model_path

    family = recipe["model"]
    keys = model_file_keys(get_registry().get("models", family["name"]).load(), family["name"])
    records = read_model_header(saved).metadata.get("dependencies", {}) if keys and saved and saved.is_file() else {}
    read = {}
    for key in keys:
        source = family.get(key)
        if not isinstance(source, str) or not source.strip():
            raise RecipeError(
                f"recipe {recipe['name']!r}: model.{key} names no model file: give one with --set model.{key}=PATH "
                "(a model.safetensors, hf://ORG/NAME or https://...#sha256=HEX)"
            )
        record = records.get(key)
        if record is not None and saved is not None and record["source"] == source:  # records come from saved
            read[key] = Dependency(rebuild(record["metadata"], saved), record)
            continue
        path = local_model_path(source)
        model = load(path)
        read[key] = Dependency(model, {"source": source, "sha256": file_sha256(path), "metadata": dict(model.metadata)})
    return read


def show_recipe(recipe: str | Path | Mapping[str, Any], sets: Iterable[str] = ()) -> str:
    """The fully resolved recipe (overrides applied, defaults filled in) as TOML that `vaezoo run
    FILE.toml` accepts: what a run would write as its recipe.toml."""
    return toml_dumps(resolve_recipe(recipe, sets))


def _previous_recipe(resume: Path, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The saved run's recipe.toml as read and as resolved; every problem with it is one error naming
    the file."""
    path = resume / "recipe.toml"
    if not path.is_file():
        raise VaezooError(f"cannot resume from {resume}: no recipe.toml there (is it a vaezoo run folder?)")
    try:
        table = read_recipe_file(path, f"cannot resume from {resume}: {path}")
    except OSError as error:
        raise VaezooError(f"cannot resume from {resume}: {path} is damaged ({error})") from error
    if not isinstance(table.get("name"), str):
        raise RecipeError(f"cannot resume from {resume}: {path} is damaged or edited: it names no recipe (name = ...)")
    if split_name(name)[1] not in (table.get("name"), str(path)):  # `vaezoo run DIST:RECIPE --resume DIR` too
        raise RecipeError(
            f"{resume} is a run of recipe {table.get('name')!r}, not {name!r}: use `vaezoo run "
            f"{table.get('name')} --resume {resume}`"
        )
    try:
        saved = resolve_recipe(table)
    except UnknownName as error:  # a name of a plugin that is not installed here: the file is not at fault
        raise RecipeError(
            f"cannot resume from {resume}: {path} names what is not installed here ({error}); install the plugin "
            "the run was trained with"
        ) from error
    except (VaezooError, TypeError, ValueError, AttributeError, KeyError) as error:  # a hand-edited or damaged file
        raise RecipeError(f"cannot resume from {resume}: {path} is damaged or edited: {error}") from error
    return table, saved


def fit(
    recipe: str | Path | Mapping[str, Any],
    *,
    sets: Iterable[str] = (),
    options: Mapping[str, Any] | None = None,
    out: str | Path | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    device: str = "auto",
    resume: str | Path | None = None,
    callbacks: Sequence[Any] = (),
) -> FitResult:
    """Train a recipe and write model.safetensors, state.safetensors, metrics.jsonl, samples.png, the
    pictures and recipe.toml into `out` (default runs/<recipe>-<UTC time>/). `resume` continues a run
    folder. Nothing in a folder changes before the run is accepted, and one run at a time writes a
    folder (vaezoo.files.run_folder). Ctrl-C / SIGTERM raise `vaezoo.errors.Interrupted` after saving the state.
    Returns a FitResult: `out_dir`, `metrics` (the last epoch's line of metrics.jsonl), `model` (the trained
    `vaezoo.Model`) and `stopped_early` (why `train.early_stop_patience` ended the run early, or None)."""
    import torch

    from vaezoo.files.run_folder import RunLock, check_resume_changes, holds_run
    from vaezoo.trainer import distributed
    from vaezoo.trainer.devices import resolve_device
    from vaezoo.trainer.loggers import build_loggers

    world, rank_device = distributed.setup(device)  # under torchrun: join the world (see docs/distributed.md)
    sets = list(sets)
    resume_dir = Path(checked_path(resume, "--resume")) if resume is not None else None
    if resume_dir is not None:
        name = str(recipe) if isinstance(recipe, (str, Path)) else str(dict(recipe).get("name"))
        previous, saved = _previous_recipe(resume_dir, name)
        resolved = resolve_recipe(previous, sets, options)
        check_resume_changes(saved, resolved, resume_dir)
        if resolved["train"]["precision"] == "auto":  # auto resolved once, when the run started: it stays
            resolved["train"]["precision"] = saved["train"]["precision"]
        if not (resume_dir / "state.safetensors").is_file():
            raise VaezooError(
                f"cannot resume from {resume_dir}: no state.safetensors there (no epoch finished and no stop "
                "was saved): start the run again"
            )
    else:
        resolved = resolve_recipe(recipe, sets, options)
    tracking = build_loggers(resolved)  # a logger whose package is missing: one line, before anything is read
    callbacks = [tracking, *callbacks] if tracking is not None else callbacks  # its start-up first: not in a bar
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    out_dir = (
        Path(checked_path(out, "--out"))
        if out is not None
        else resume_dir or Path("runs") / f"{resolved['name']}-{stamp}"
    )
    out_dir = distributed.broadcast_object(out_dir)  # rank 0's time stamp
    same_folder = resume_dir is not None and out_dir.resolve() == resume_dir.resolve()
    lock = RunLock(out_dir) if world.is_main else None  # only rank 0 writes files
    if lock is not None:
        lock.acquire()
    try:  # checked under the lock: a run that finished a moment ago counts
        if not same_folder and holds_run(out_dir):
            hint = (
                f"continue it with --resume {out_dir}"
                if resume_dir is None
                else "choose an empty --out for the continued run"
            )
            raise VaezooError(f"{out_dir} already holds a run: {hint}, or choose another --out")
        threads = torch.get_num_threads()
        try:
            return _fit_on(
                rank_device or resolve_device(device), resolved, out_dir, data_dir, world, resume_dir, callbacks
            )
        except BaseException as error:
            if tracking is not None:  # the loggers hear how the run ended
                tracking.ended_by(error)
            raise
        finally:
            torch.set_num_threads(threads)  # train.threads is the run's, not the calling program's
    except BaseException:
        if lock is not None:  # refused (or stopped) before anything was written: the folders it made go again
            lock.release()
            lock.remove_created()
        raise
    finally:
        if lock is not None:
            lock.release()


@contextmanager
def _naming_saved_recipe(resume_dir: Path | None) -> Iterator[None]:
    """On resume, a recipe error while building what the saved recipe.toml describes names that file
    (a resume may change only train keys, so the rest comes from it)."""
    try:
        yield
    except RecipeError as error:
        if resume_dir is None:
            raise
        raise RecipeError(
            f"cannot resume from {resume_dir}: {resume_dir / 'recipe.toml'} is damaged or edited: {error}"
        ) from error


def make_run(
    recipe: dict[str, Any],
    device: Any,
    *,
    out_dir: str | Path,
    data_dir: str | os.PathLike[str] | None = None,
    resume_dir: Path | None = None,
) -> Run:
    """A run of a resolved recipe (`resolve_recipe`) on a torch `device`, ready for
    `vaezoo.trainer.loop.train`: its threads (train.threads), the data (train.limit, train.val_fraction,
    train.test_limit), the model with its initial weights by train.seed, the precision (`auto` measured once
    on this model and batch, on rank 0 for every rank, and recorded in the recipe's train.precision), the
    optimizers, and the state of `resume_dir`'s state.safetensors. Writes nothing; `out_dir` is where the
    run's files will go."""
    import torch

    from vaezoo.data import hold_out, limit_subset, load_split
    from vaezoo.loading import build_on_meta
    from vaezoo.recipes.build import build_model
    from vaezoo.trainer import distributed
    from vaezoo.trainer.devices import on_device, resolve_precision, resolve_threads, start_cuda
    from vaezoo.trainer.loop import prepare
    from vaezoo.trainer.run import Run, blame
    from vaezoo.trainer.settings import TrainSettings
    from vaezoo.trainer.step import measured_precision

    settings = TrainSettings.of(recipe)
    torch.set_num_threads(resolve_threads(settings.threads))
    start_cuda(device)  # CUDA's start-up overlaps the data loading
    auto = settings.precision == "auto"  # measured below, on the built model
    precision = resolve_precision("fp32" if auto else settings.precision, device)
    with _naming_saved_recipe(resume_dir):
        dataset = make_dataset(recipe, data_dir)
        built_on = read_model_files(recipe, resume_dir / "model.safetensors" if resume_dir else None)
        # a shape the family cannot take: one line before any data is read
        build_on_meta(lambda: build_model(recipe, dataset.shape, dataset.classes, built_on))
    train_images, train_labels = limit_subset(*load_split(dataset, "train"), settings.limit)
    validation: dict[str, Any] = {}  # keywords of Run
    if settings.val_fraction > 0:  # held out of the (limited) training split, by train.seed
        (train_images, train_labels), (val_images, val_labels) = hold_out(
            train_images, train_labels, settings.val_fraction, settings.seed
        )
        validation = {"val_images": val_images.to(device), "val_labels": val_labels.to(device)}
    test_images, test_labels = limit_subset(*load_split(dataset, "test"), settings.test_limit)
    torch.manual_seed(settings.seed)  # the initial weights depend on --seed only (resume loads them)
    with _naming_saved_recipe(resume_dir):
        model = build_model(recipe, dataset.shape, dataset.classes, built_on).to(device)
    labels: dict[str, Any] = (  # keywords of Run
        {"train_labels": train_labels.to(device), "test_labels": test_labels.to(device)} if model.conditional else {}
    )
    if validation and not model.conditional:
        validation.pop("val_labels")
    run = Run(
        model,
        recipe,
        train_images.to(device),
        test_images.to(device),
        Path(out_dir),
        device,
        precision,
        **labels,
        **validation,
    )
    with on_device(device):  # once CUDA has started in the background
        if auto:  # measured on this model and batch (cached): never slower than fp32
            world = distributed.current_world()
            with blame(run, "a training step (the precision probe)"):  # on rank 0, for every rank
                run.precision = distributed.broadcast_object(measured_precision(run) if world.is_main else None)
            # the run's from now on: recipe.toml records it, a resume keeps it
            recipe["train"]["precision"] = run.precision.name
            run.settings = replace(run.settings, precision=run.precision.name)
        prepare(run, resume_dir / "state.safetensors" if resume_dir is not None else None)
    return run


def _fit_on(
    torch_device: Any,
    resolved: dict[str, Any],
    out_dir: Path,
    data_dir: Any,
    world: Any,
    resume_dir: Path | None,
    callbacks: Sequence[Any],
) -> FitResult:
    """fit() once the run folder is ours: make the run (a refused resume stops here, before anything is
    written), then write recipe.toml and train."""
    from vaezoo.trainer.devices import on_device
    from vaezoo.trainer.epoch_files import RunFiles
    from vaezoo.trainer.loop import train

    run = make_run(resolved, torch_device, out_dir=out_dir, data_dir=data_dir, resume_dir=resume_dir)
    if run.state.epoch >= run.settings.epochs:  # a crash after the last state's commit: outputs left to write
        same_folder = resume_dir is not None and resume_dir.resolve() == out_dir.resolve()
        if world.is_main and same_folder and RunFiles().catch_up(run):
            return FitResult(out_dir, run.history[-1], run.model)
        raise VaezooError(
            f"{resume_dir} is already trained to epoch {run.state.epoch}: pass --epochs N with N > "
            f"{run.state.epoch} to train further"
        )
    recipe_file = out_dir / "recipe.toml"
    previous = recipe_file.read_bytes() if world.is_main and recipe_file.is_file() else None
    if world.is_main:  # accepted: now the folder changes
        write_text_atomic(recipe_file, toml_dumps(resolved))
    files = RunFiles()
    try:
        with on_device(torch_device):  # CUDA's current device is the run's (its streams and graphs on cuda:N too)
            metrics = train(run, [files, *callbacks])
    except RunFailed:  # diverged: the folder keeps the recipe of its last good state (a resume reads it)
        files.close()
        if previous is not None:
            write_bytes_atomic(recipe_file, previous)
        raise
    except BaseException:
        with suppress(Exception):  # the files of the last epoch are written before the lock goes
            files.close()
        raise
    return FitResult(out_dir, metrics, run.model, run.stopped_early)


def load_split_images(
    model: Any,
    split: str = "test",
    data_dir: str | os.PathLike[str] | None = None,
    limit: int = 0,
    paths: Mapping[str, str] | None = None,
) -> tuple[Tensor, Tensor]:
    """Uint8 images and int64 labels of a split of a loaded model's dataset (`limit` > 0: that many,
    drawn with a fixed seed; `paths`: the dataset's folder keys, see `make_dataset`)."""
    from vaezoo.data import limit_subset, load_split
    from vaezoo.loading import check_plugins

    if model.metadata:  # the dataset plugin is needed now (loading did not need it)
        check_plugins(model.metadata, "the model", kinds=("dataset",))
    dataset = make_dataset(model.recipe, data_dir, from_file=True, paths=paths)
    name = model.recipe["dataset"]["name"]
    if split not in dataset.splits:
        raise VaezooError(f"unknown split {split!r}: {name} has {', '.join(dataset.splits)}")
    check_same_data(model, dataset)
    return limit_subset(*load_split(dataset, split), limit)


def check_same_data(model: Any, dataset: Any) -> None:
    """A DataError unless `dataset` gives images of the shape the model was trained on and, for a
    conditional model, the same classes (its labels index them)."""
    from vaezoo.errors import DataError

    name, shape, trained = model.recipe["dataset"]["name"], tuple(dataset.shape), tuple(model.in_shape)
    if shape != trained:
        raise DataError(
            f"the model was trained on images of shape {trained} (C, H, W) but dataset {name!r} gives "
            f"{shape} here: evaluate it on data like those it was trained on"
        )
    if model.conditional and tuple(dataset.classes) != tuple(model.classes):
        raise DataError(
            f"the model is conditional on {len(model.classes)} classes ({', '.join(model.classes)}) but "
            f"dataset {name!r} has "
            f"{len(dataset.classes)} ({', '.join(dataset.classes) or 'none'}) here: its labels would mean other classes"
        )


def evaluate_file(
    model_path: str | Path,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    split: str = "test",
    limit: int = 0,
    device: str = "auto",
    iw_samples: int = 0,
    seed: int = 0,
    paths: Mapping[str, str] | None = None,
    fid: bool = False,
    fid_samples: int = 0,
    feature_extractor: type | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    precision: str | None = None,
) -> dict[str, Any]:
    """Metrics of a saved model on a split of its recipe's dataset (see `evaluate.evaluation_report`;
    `iw_samples` > 0 adds the importance-weighted NLL; `paths`: the dataset's folder keys). `fid` adds
    FID and KID of `fid_samples` samples (0: 10,000 or the split's size if smaller; drawn with `seed`)
    against the split's images (`vaezoo.trainer.sample_quality`): with Inception-v3, whose weights are
    found or fetched first, or with `feature_extractor` (a torch-fidelity FeatureExtractorBase subclass).
    `progress(what, done, total)` hears the progress of each stage (the loss, the importance-weighted NLL,
    the reconstructions, FID's). `precision` (fp32, bf16, fp16) is the autocast of the loss and the NLL;
    None: the precision the model trained in (`vaezoo.training.precision`) where the device can run it,
    else fp32, so that `loss` is the run's `test_loss` on the same images."""
    from vaezoo.loading import load
    from vaezoo.sharing import fid_weights
    from vaezoo.trainer import sample_quality as quality
    from vaezoo.trainer.evaluate import evaluation_precision, evaluation_report
    from vaezoo.trainer.step import memory_format

    if iw_samples < 0:
        raise VaezooError(f"--iw-samples must be 0 or more, got {iw_samples}")
    if fid_samples < 0:
        raise VaezooError(f"--fid-samples must be 0 or more, got {fid_samples}")
    with ExitStack() as stack:
        model = load(model_path, device=device)
        layout = memory_format(model, model.recipe["train"]["channels_last"])
        model.to(memory_format=layout)  # the layout the run evaluated in
        autocast = evaluation_precision(model, precision)
        weights = None
        if fid:  # everything FID needs is checked before the (long) evaluation
            quality.import_fidelity()
            quality.check_channels(model.in_shape[0])
            if feature_extractor is None:
                weights = stack.enter_context(fid_weights.private_weights(fid_weights.inception_weights()))
        images, labels = load_split_images(model, split, data_dir, limit, paths)
        metrics = evaluation_report(
            model,
            images,
            labels,
            iw_samples=iw_samples,
            batch_size=model.recipe["train"]["eval_batch_size"],
            seed=seed,
            precision=autocast,
            progress=progress,
        )
        metrics.update(dict.fromkeys(quality.FID_KEYS))
        if fid:
            metrics.update(
                quality.sample_quality(
                    model,
                    images,
                    samples=fid_samples or min(quality.DEFAULT_SAMPLES, len(images)),
                    seed=seed,
                    weights=weights,
                    feature_extractor=feature_extractor,
                    advance=progress,
                )
            )
    return {"model": str(model_path), "split": split, "images": len(images), **metrics}


def reconstruct_file(
    model_path: str | Path,
    out: str | Path,
    *,
    n: int = 16,
    seed: int = 0,
    split: str = "test",
    data_dir: str | os.PathLike[str] | None = None,
    device: str = "cpu",
) -> None:
    """A PNG of `n` images of a split (drawn with `seed`) above their reconstructions by a saved model."""
    from vaezoo.loading import load
    from vaezoo.trainer.pictures import save_reconstructions

    model = load(model_path, device=device)
    images, labels = load_split_images(model, split, data_dir)
    save_reconstructions(model, images, out, n=n, seed=seed, labels=labels)


def interpolate_file(
    model_path: str | Path,
    out: str | Path,
    *,
    pairs: int = 8,
    steps: int = 10,
    seed: int = 0,
    split: str = "test",
    data_dir: str | os.PathLike[str] | None = None,
    device: str = "cpu",
) -> None:
    """A PNG of latent-space straight lines (rows) between `pairs` image pairs drawn with `seed`."""
    from vaezoo.loading import load
    from vaezoo.trainer.pictures import require_interpolation, save_interpolations

    if steps < 2:
        raise VaezooError(f"--steps must be 2 or more, got {steps}")
    if pairs * steps > MAX_GRID_IMAGES:
        raise VaezooError(
            f"-n {pairs} rows of --steps {steps} make {pairs * steps} images: at most {MAX_GRID_IMAGES} in one picture"
        )
    model = load(model_path, device=device)
    require_interpolation(model)  # before the data are read
    images, labels = load_split_images(model, split, data_dir)
    save_interpolations(model, images, out, pairs=pairs, steps=steps, seed=seed, labels=labels)
