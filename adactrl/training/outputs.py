"""What a run leaves behind besides checkpoints: the history CSVs, the log file and the MLflow run.

MLflow is written through `MlflowClient` (no global active run), so several runs can live in
one process (the tests). The tracking URI and experiment follow MLflow's own conventions: a flag
wins, then `MLFLOW_TRACKING_URI` / `MLFLOW_EXPERIMENT_NAME`, then MLflow's default,
`sqlite:///mlflow.db` in the working directory with artifacts under ./mlruns, so every run
started from one directory lands in one store that `mlflow ui` there shows.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import socket
import subprocess
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient

from adactrl.atomic import atomic_path

TRAINING_HISTORY = "training_history.csv"
VALIDATION_HISTORY = "validation_history.csv"
LOG_FILE = "train.log"
LOCK_FILE = ".adactrl-run.lock"
RUN_FILES = ("summary.json", "best_model.pt", TRAINING_HISTORY, VALIDATION_HISTORY, LOG_FILE,
             "training_curves.png", "budget_curves.png")  # fmt: skip
"""What a run leaves in its output dir besides its epoch checkpoints."""
TRAINING_CURVES = "training_curves.png"
BUDGET_CURVES = "budget_curves.png"
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
PROBE_TIMEOUT_S = 3.0
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
        with atomic_path(self.path) as tmp, tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(self.rows)


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
        tags: dict[str, str] | None = None,
    ) -> None:
        self.output_dir = output_dir
        check_writable(output_dir)
        self.tracking_uri = resolve_tracking_uri(tracking_uri)
        check_tracking_uri(self.tracking_uri)
        self.train_history = CsvHistory(output_dir / TRAINING_HISTORY, "step")
        self.val_history = CsvHistory(output_dir / VALIDATION_HISTORY, "epoch")
        self.log = logging.getLogger("adactrl.train")
        self._handler = _add_file_handler(self.log, output_dir / LOG_FILE)
        self.client = MlflowClient(self.tracking_uri)
        self._last_step: dict[str, int] = {}
        """Per metric, the newest step logged: a replayed step (a resumed run, or the epoch a lost
        learner replays) goes to the CSVs again but never twice to MLflow."""
        self.run_id = self._open_run(resolve_experiment(experiment), run_id, run_name)
        if tags:
            self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in sorted(tags.items())])

    def _open_run(self, experiment: str, run_id: str | None, run_name: str | None) -> str:
        if run_id is not None:
            try:
                self.client.update_run(run_id, status="RUNNING")
                self._last_step = self._logged_steps(run_id)
                return run_id
            except Exception as err:  # the store changed between runs: keep going in a new run
                self.log.warning("cannot reopen MLflow run %s (%s); starting a new one", run_id, err)
        try:
            found = self.client.get_experiment_by_name(experiment)
            experiment_id = found.experiment_id if found else self.client.create_experiment(
                experiment, artifact_location=_artifact_location(self.tracking_uri)
            )
            return self.client.create_run(experiment_id, run_name=run_name).info.run_id
        except Exception as err:
            raise ValueError(f"cannot open an MLflow run at tracking URI {self.tracking_uri} ({err}); fix "
                             "--mlflow_tracking_uri or MLFLOW_TRACKING_URI") from err

    def _logged_steps(self, run_id: str) -> dict[str, int]:
        """The newest step of each metric a reopened run holds: a killed attempt may have logged
        steps past its last checkpoint."""
        keys = self.client.get_run(run_id).data.metrics
        return {key: max(m.step for m in self.client.get_metric_history(run_id, key)) for key in keys}

    def log_params(self, params: dict[str, object]) -> None:
        items = [Param(k, str(v)) for k, v in sorted(params.items())]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        fresh = {k: v for k, v in metrics.items() if step > self._last_step.get(k, -1)}
        self._last_step.update(dict.fromkeys(fresh, step))
        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in fresh.items()]
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

    def log_budget_curves(self, points: Sequence[BudgetPoint], oracle: Sequence[BudgetPoint] = ()) -> Path:
        """Accuracy and latency against the budget (the controller's validation, and the static
        oracle's where given) as `budget_curves.png` in the output dir and the MLflow run."""
        from adactrl.plots import plot_budget_curves

        path = plot_budget_curves(points, oracle, self.output_dir / BUDGET_CURVES)
        self.client.log_artifact(self.run_id, str(path))
        return path

    def finish(self, ok: bool) -> None:
        """Draw the per-epoch validation curves (when there are any), then close the MLflow run."""
        if len(self.val_history.rows) >= 1:
            from adactrl.plots import plot_training_curves

            path = plot_training_curves(self.val_history.rows, self.output_dir / TRAINING_CURVES)
            self.client.log_artifact(self.run_id, str(path))
        status = RunStatus.to_string(RunStatus.FINISHED if ok else RunStatus.FAILED)
        self.client.set_terminated(self.run_id, status=status)
        self.log.removeHandler(self._handler)
        self._handler.close()


@dataclass(frozen=True)
class BudgetPoint:
    """One budget's aggregate: what `budget_curves.png` draws."""

    budget_ms: float
    accuracy: float
    latency_ms: float
    violation_rate: float


def budget_point(budget_ms: float, runs: Sequence) -> BudgetPoint:
    """Means over runs at one budget; each run has `accuracy` and `total_ms` (evaluation and
    sweep records alike)."""
    latency = [r.total_ms for r in runs]
    return BudgetPoint(budget_ms, sum(r.accuracy for r in runs) / len(runs), sum(latency) / len(latency),
                       sum(float(ms > budget_ms) for ms in latency) / len(latency))  # fmt: skip


def budget_points(records: Iterable) -> list[BudgetPoint]:
    """One `budget_point` per budget of evaluation records (each with `budget_ms`)."""
    by_budget: dict[float, list] = {}
    for record in records:
        by_budget.setdefault(record.budget_ms, []).append(record)
    return [budget_point(budget, runs) for budget, runs in sorted(by_budget.items())]


def resolve_tracking_uri(uri: str | None) -> str:
    """The flag, else `MLFLOW_TRACKING_URI`, else MLflow's local default."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def resolve_experiment(name: str | None, default: str = "adactrl-train") -> str:
    """The flag, else `MLFLOW_EXPERIMENT_NAME`, else `default`."""
    return name or os.environ.get("MLFLOW_EXPERIMENT_NAME") or default


def check_tracking_uri(uri: str) -> None:
    """Fail in seconds, naming the URI, where the tracking store cannot be reached: a server that
    does not answer (MLflow itself would retry for minutes) or a database in a folder that cannot
    be written. Runs before Ray starts."""
    parsed = urlparse(uri)
    hint = "; fix --mlflow_tracking_uri or MLFLOW_TRACKING_URI"
    if parsed.scheme in ("http", "https"):
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        try:
            socket.create_connection((parsed.hostname, port), timeout=PROBE_TIMEOUT_S).close()
        except OSError as err:
            raise ValueError(f"cannot reach the MLflow tracking server at {uri} ({err}){hint}") from err
    elif parsed.scheme == "sqlite":
        folder = Path(uri.removeprefix("sqlite:///")).resolve().parent
        if not (folder.is_dir() and os.access(folder, os.W_OK)):
            raise ValueError(f"MLflow tracking URI {uri}: the folder {folder} does not exist or cannot be "
                             f"written{hint}")  # fmt: skip
    elif parsed.scheme not in ("", "file", "databricks", "postgresql", "mysql", "mssql"):
        raise ValueError(f"MLflow tracking URI {uri}: unknown scheme {parsed.scheme!r}{hint}")


def check_writable(output_dir: Path) -> None:
    """Create `output_dir` and prove a file can be written there, or say which path is wrong."""
    hint = "; choose another --output_dir"
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"--output_dir {output_dir} is a file, not a folder{hint}")
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe = output_dir / ".write-probe"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise ValueError(f"--output_dir {output_dir} cannot be written ({err.strerror or err}){hint}") from err


def run_tags(model_path: str | None, dataset_names: Sequence[str]) -> dict[str, str]:
    """MLflow tags of a run: the source commit where the package sits in a git checkout (MLflow's
    own tag key, shown in its UI), the model and the datasets."""
    tags = {"adactrl.model_path": model_path or "embedded (shipped)", "adactrl.datasets": ",".join(dataset_names)}
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                                capture_output=True, text=True, timeout=5)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return tags
    if commit.returncode == 0:
        tags["mlflow.source.git.commit"] = commit.stdout.strip()
    return tags


@contextmanager
def claim_run_dir(output_dir: Path, *, resume: bool, overwrite: bool) -> Iterator[None]:
    """Hold `output_dir` for one run: a lock file names the owning process, so a second run into
    the same dir is refused; a dir that already holds a run's results is refused unless the run
    resumes it (`--resume`) or replaces it (`--overwrite`, which removes the old run's files
    first, so no history row or checkpoint of it survives into the new run)."""
    check_writable(output_dir)
    lock = output_dir / LOCK_FILE
    _take_lock(lock)
    try:
        found = existing_run_files(output_dir)
        if found and not (resume or overwrite):
            raise ValueError(f"--output_dir {output_dir} already holds a run ({', '.join(found[:4])}); pass --resume "
                             "to continue it, --overwrite to replace it, or choose another --output_dir")  # fmt: skip
        if overwrite and not resume:
            for name in found:
                (output_dir / name).unlink()
        yield
    finally:
        if _lock_owner(lock).get("pid") == os.getpid():
            lock.unlink(missing_ok=True)


def existing_run_files(output_dir: Path) -> list[str]:
    names = sorted(p.name for p in output_dir.glob("checkpoint_epoch_*.pt"))
    return names + [name for name in RUN_FILES if (output_dir / name).exists()]


def _take_lock(lock: Path) -> None:
    owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            held = _lock_owner(lock)
            if held.get("host", owner["host"]) == owner["host"] and not _alive(held.get("pid")):
                logging.getLogger("adactrl.train").warning(
                    "%s: stale lock of pid %s (started %s, no longer running); taking it over",
                    lock, held.get("pid"), held.get("started"))  # fmt: skip
                lock.unlink(missing_ok=True)
                continue
            raise ValueError(f"--output_dir {lock.parent} is in use by another run (pid {held.get('pid')} on "
                             f"{held.get('host')}, started {held.get('started')}); choose another --output_dir, or "
                             f"delete {lock} if that run is gone")  # fmt: skip
        with os.fdopen(fd, "w") as f:
            json.dump(owner, f)
        return
    raise ValueError(f"--output_dir {lock.parent}: another run took the lock at the same moment; choose another "
                     "--output_dir")  # fmt: skip


def _lock_owner(lock: Path) -> dict:
    try:
        return json.loads(lock.read_text())
    except (OSError, ValueError):
        return {}  # unreadable: a writer died mid-write; treated as a dead owner on this host


def _alive(pid: object) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
