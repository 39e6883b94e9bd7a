"""The `mlflow` logger: one MLflow run per vaezoo run, in the tracking store MLFLOW_TRACKING_URI names, else
in a SQLite store next to the run folder (`runs/mlflow.db`, artifacts in `runs/mlartifacts/`), which
`mlflow ui --backend-store-uri sqlite:///ABSOLUTE/runs/mlflow.db` shows. Needs the optional extra `mlflow`
(mlflow-skinny, SQLAlchemy and Alembic: the UI itself is in the full `mlflow` package)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import vaezoo

RUN_RECORD = "mlflow.json"  # in the run folder: the MLflow run it logs to, so that a resume continues it
STATUS = {"finished": "FINISHED", "interrupted": "KILLED", "failed": "FAILED"}
MAX_PARAM_VALUE = 6000  # characters: MLflow refuses longer values
BATCH = 100  # params per log_batch call (MLflow's limit)
DATABASES = ("sqlite", "postgresql", "mysql", "mssql")  # URI schemes of MLflow's SQLAlchemy store


def flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested tables as dotted keys: {"train": {"lr": 0.001}} -> {"train.lr": 0.001}."""
    flat: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def numbers(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The numeric values of an epoch's line of metrics.jsonl, flattened (`test_terms.kl_0`), without
    `epoch` (MLflow's step) and `step`."""
    return {
        key: float(value)
        for key, value in flatten(metrics).items()
        if key not in ("epoch", "step") and isinstance(value, int | float) and not isinstance(value, bool)
    }


@contextlib.contextmanager
def quiet_store_setup() -> Iterator[None]:
    """MLflow and Alembic announce creating and migrating a database at INFO level: not on vaezoo's console."""
    loggers = [logging.getLogger(name) for name in ("mlflow.store.db.utils", "alembic")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


class MLflowLogger(vaezoo.Logger):
    """Params (the resolved recipe, flattened: `train.lr`, `encoder.hidden`, ...), each epoch's metrics
    with the epoch as MLflow's step, the epoch's pictures as images per step, recipe.toml at the start, and
    model.safetensors (with best.safetensors and metrics.jsonl) when the run finishes. `experiment`: the
    MLflow experiment (default: the recipe's name); `log_model = false` leaves the model files out. A
    resumed run continues its MLflow run (recorded in OUT/mlflow.json) and logs the epochs it lacks."""

    def __init__(self, *, experiment: str = "", log_model: bool = True) -> None:
        try:
            from mlflow.tracking import MlflowClient

            if os.environ.get("MLFLOW_TRACKING_URI", "sqlite").split(":")[0].split("+")[0] in DATABASES:
                import alembic  # noqa: F401  MLflow's database store: imported by MLflow only when the run starts
                import sqlalchemy  # noqa: F401
        except ImportError as error:
            raise vaezoo.VaezooError(
                f"logger 'mlflow' needs the {error.name or 'mlflow'} package: pip install 'vaezoo[mlflow]'"
            ) from error
        self._client_class = MlflowClient
        self.experiment, self.log_model = experiment, log_model
        self.client: Any = None
        self.run_id = ""
        self.out_dir = Path()

    def start(self, run: vaezoo.RunInfo) -> str:
        self.out_dir = run.out_dir
        parent = run.out_dir.resolve().parent
        uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(parent / 'mlflow.db').as_posix()}"
        with quiet_store_setup():
            self.client = self._client_class(tracking_uri=uri)
            resumed = self._recorded_run(uri)
            if resumed:
                self.run_id = resumed
                self.client.update_run(self.run_id, status="RUNNING")
            else:
                self.run_id = self._new_run(run, uri, parent)
        self._log_params(run.recipe)
        logged = {metric.step for metric in self.client.get_metric_history(self.run_id, "train_loss")}
        for line in run.history:  # a resumed run: the epochs this MLflow run has not seen
            if isinstance(line.get("epoch"), int) and line["epoch"] not in logged:
                self.log_metrics(line, line["epoch"])
        where = f"run {self.run_id} of experiment {self.experiment or run.recipe['name']!r} in {uri}"
        if os.environ.get("MLFLOW_TRACKING_URI"):
            return f"{where} (MLFLOW_TRACKING_URI)"
        return f"{where}; see it with: mlflow ui --backend-store-uri {uri}"

    def _recorded_run(self, uri: str) -> str:
        """The MLflow run that OUT/mlflow.json records for this store, if the store still has it."""
        try:
            record = json.loads((self.out_dir / RUN_RECORD).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return ""
        run_id = record.get("run_id") if isinstance(record, dict) and record.get("tracking_uri") == uri else None
        if not isinstance(run_id, str):
            return ""
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_run(run_id).info.run_id
        except MlflowException:
            return ""

    def _new_run(self, run: vaezoo.RunInfo, uri: str, parent: Path) -> str:
        name = self.experiment or run.recipe["name"]
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            experiment_id = experiment.experiment_id
        elif os.environ.get("MLFLOW_TRACKING_URI"):  # the store's own artifact root
            experiment_id = self.client.create_experiment(name)
        else:  # next to the store, not in the current folder (MLflow's default)
            experiment_id = self.client.create_experiment(name, artifact_location=(parent / "mlartifacts").as_uri())
        tags = {
            "mlflow.runName": run.out_dir.name,
            "vaezoo.out_dir": str(run.out_dir.resolve()),
            "vaezoo.recipe": run.recipe["name"],
            "vaezoo.version": vaezoo.__version__,
            "vaezoo.device": run.device,
            "vaezoo.precision": run.precision,
        }
        run_id = self.client.create_run(experiment_id, run_name=run.out_dir.name, tags=tags).info.run_id
        record = {"tracking_uri": uri, "experiment_id": experiment_id, "run_id": run_id}
        (self.out_dir / RUN_RECORD).write_text(json.dumps(record) + "\n", encoding="utf-8")
        if (self.out_dir / "recipe.toml").is_file():
            self.client.log_artifact(run_id, str(self.out_dir / "recipe.toml"))
        return run_id

    def _log_params(self, recipe: Mapping[str, Any]) -> None:
        """The flattened recipe; a resumed run keeps the values it started with (MLflow never changes a
        param: a resume's new train.epochs or train.lr is in recipe.toml and in each epoch's metrics)."""
        from mlflow.entities import Param

        known = self.client.get_run(self.run_id).data.params
        params = [
            Param(key, (value if isinstance(value, str) else json.dumps(value))[:MAX_PARAM_VALUE])
            for key, value in flatten(recipe).items()
            if key not in known
        ]
        for first in range(0, len(params), BATCH):
            self.client.log_batch(self.run_id, params=params[first : first + BATCH])

    def log_metrics(self, metrics: Mapping[str, Any], epoch: int) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        values = [Metric(key, value, stamp, epoch) for key, value in numbers(metrics).items()]
        self.client.log_batch(self.run_id, metrics=values)

    def log_images(self, images: Mapping[str, Any], epoch: int) -> None:
        for name, picture in images.items():
            self.client.log_image(self.run_id, picture, key=name, step=epoch)

    def finish(self, status: str) -> None:
        if self.client is None:
            return
        if status == "finished":
            names = ["metrics.jsonl", *(["model.safetensors", "best.safetensors"] if self.log_model else [])]
            for name in names:
                if (self.out_dir / name).is_file():
                    self.client.log_artifact(self.run_id, str(self.out_dir / name))
        self.client.set_terminated(self.run_id, STATUS.get(status, "FAILED"))
