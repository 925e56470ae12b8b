"""What a run leaves behind besides checkpoints: the history CSVs, the log file and the MLflow run.

MLflow is written through `MlflowClient` (no global active run), so several runs can live in
one process (the tests). With no tracking URI the run goes where MLflow's own default puts it,
`sqlite:///mlflow.db` in the working directory with artifacts under ./mlruns, so every run
started from one directory lands in one store that `mlflow ui` there shows.
"""

from __future__ import annotations

import csv
import logging
import time
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlparse

from mlflow.entities import Metric, Param, RunStatus
from mlflow.tracking import MlflowClient

TRAINING_HISTORY = "training_history.csv"
VALIDATION_HISTORY = "validation_history.csv"
LOG_FILE = "train.log"
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
_BATCH = 200  # MLflow's log_batch accepts at most 1000 metrics; stay well under it


class CsvHistory:
    """Rows of metrics kept in memory and rewritten whole, so resume can drop rows past a checkpoint."""

    def __init__(self, path: Path, key: str) -> None:
        self.path = path
        self.key = key
        self.rows: list[dict[str, float | int | str]] = []
        if path.is_file():
            with path.open(newline="") as f:
                self.rows = list(csv.DictReader(f))

    def truncate(self, last: int) -> None:
        """Keep rows whose `key` column is <= last (what the checkpoint being resumed had seen)."""
        self.rows = [r for r in self.rows if int(float(r[self.key])) <= last]
        self._write()

    def append(self, row: dict[str, float | int | str]) -> None:
        self.rows.append(row)
        self._write()

    def _write(self) -> None:
        columns: list[str] = []
        for row in self.rows:
            columns += [k for k in row if k not in columns]
        tmp = self.path.with_suffix(".csv.tmp")
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(self.rows)
        tmp.replace(self.path)


class RunRecorder:
    """History CSVs, `train.log` and one MLflow run for a training run in `output_dir`."""

    def __init__(
        self,
        output_dir: Path,
        *,
        tracking_uri: str | None,
        experiment: str,
        run_id: str | None = None,
        run_name: str | None = None,
    ) -> None:
        self.output_dir = output_dir
        output_dir.mkdir(parents=True, exist_ok=True)
        self.train_history = CsvHistory(output_dir / TRAINING_HISTORY, "step")
        self.val_history = CsvHistory(output_dir / VALIDATION_HISTORY, "epoch")
        self.log = logging.getLogger("adactrl.train")
        self._handler = _add_file_handler(self.log, output_dir / LOG_FILE)
        self.tracking_uri = tracking_uri or DEFAULT_TRACKING_URI
        self.client = MlflowClient(self.tracking_uri)
        self.run_id = self._open_run(experiment, run_id, run_name)

    def _open_run(self, experiment: str, run_id: str | None, run_name: str | None) -> str:
        if run_id is not None:
            try:
                self.client.update_run(run_id, status="RUNNING")
                return run_id
            except Exception as err:  # the store changed between runs: keep going in a new run
                self.log.warning("cannot reopen MLflow run %s (%s); starting a new one", run_id, err)
        found = self.client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else self.client.create_experiment(
            experiment, artifact_location=_artifact_location(self.tracking_uri)
        )
        return self.client.create_run(experiment_id, run_name=run_name).info.run_id

    def log_params(self, params: dict[str, object]) -> None:
        items = [Param(k, str(v)) for k, v in sorted(params.items())]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        for i in range(0, len(items), _BATCH):
            self.client.log_batch(self.run_id, metrics=items[i : i + _BATCH])

    def log_train_step(self, step: int, epoch: int, metrics: dict[str, float]) -> None:
        self.train_history.append({"step": step, "epoch": epoch} | metrics)
        self.log_metrics(metrics, step)

    def log_validation(self, epoch: int, step: int, metrics: dict[str, float]) -> None:
        self.val_history.append({"epoch": epoch, "step": step} | metrics)
        self.log_metrics(metrics, step)

    def log_artifacts(self, paths: Iterable[Path]) -> None:
        for path in paths:
            if path.is_file():
                self.client.log_artifact(self.run_id, str(path))

    def finish(self, ok: bool) -> None:
        status = RunStatus.to_string(RunStatus.FINISHED if ok else RunStatus.FAILED)
        self.client.set_terminated(self.run_id, status=status)
        self.log.removeHandler(self._handler)
        self._handler.close()


def _artifact_location(tracking_uri: str) -> str | None:
    """Beside a local SQLite store, ./mlruns next to the database file (MLflow's default place)."""
    parsed = urlparse(tracking_uri)
    if parsed.scheme != "sqlite":
        return None
    db = Path(tracking_uri.removeprefix("sqlite:///"))
    return (db.resolve().parent / "mlruns").as_uri()


def _add_file_handler(log: logging.Logger, path: Path) -> logging.Handler:
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    return handler
