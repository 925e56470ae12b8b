"""The settings of one `adactrl serve` application: the command's flags, or the `args` of a Serve
config file's application (cluster/serve_config.yaml)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

IMPORT_PATH = "adactrl.orchestration.serve:build_app"
"""The application builder a Serve config file names (`serve deploy`, `adactrl serve --config`)."""


@dataclass(frozen=True)
class ServeConfig:
    controller: str
    """Controller checkpoint (best_model.pt from `adactrl train`), loaded by every replica."""
    model_path: str | None = None
    """Model directory, embedded or MolmoE-1B (None: the shipped embedded model)."""
    num_replicas: int = 1
    """Model replicas, each with its own model and controller copy: one per GPU with device cuda."""
    device: str = "cpu"
    """cpu, or cuda: each replica then asks Ray for one GPU and runs on it."""
    replica_cpus: float = 1.0
    """CPUs Ray reserves for each model replica."""
    num_threads: int | None = None
    """torch threads per replica (None: the checkpoint's calibration threads, else replica_cpus)."""
    max_new_tokens: int = 4
    """Answer tokens at most; a request may ask for fewer, never more."""
    calibration_runs: int = 8
    """Runs of the cheapest plan at replica start; their p95 is the latency below which a budget
    left is refused (or run at the cheapest plan with best_effort)."""
    host: str = "127.0.0.1"
    port: int = 8000

    def __post_init__(self) -> None:
        if not self.controller:
            raise ValueError("serve needs a controller checkpoint: pass --controller outputs/train/best_model.pt")
        if self.num_replicas < 1:
            raise ValueError(f"--num_replicas must be >= 1, got {self.num_replicas}")
        if not self.replica_cpus > 0:
            raise ValueError(f"--replica_cpus must be above 0, got {self.replica_cpus}")
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError(f"--num_threads must be >= 1, got {self.num_threads}")
        if self.max_new_tokens < 1 or self.calibration_runs < 1:
            raise ValueError("--max_new_tokens and --calibration_runs must be >= 1")
        if self.device != "cpu" and not self.device.startswith("cuda"):
            raise ValueError(f"--device must be cpu or cuda, got {self.device!r}")
        if not 1 <= self.port <= 65535:
            raise ValueError(f"--port must be 1..65535, got {self.port}")

    @property
    def replica_gpus(self) -> int:
        return 1 if self.device.startswith("cuda") else 0

    @property
    def replica_device(self) -> str:
        """Inside a replica Ray shows only its own GPU, so any cuda[:N] is that replica's cuda."""
        return "cuda" if self.replica_gpus else "cpu"

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> ServeConfig:
        """From a Serve config file's application `args`; an unknown key is refused by name."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(args) - known)
        if unknown:
            raise ValueError(f"unknown serve argument(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**args)


def read_serve_file(path: str | Path, overrides: dict[str, Any]) -> ServeConfig:
    """A `serve deploy` config file's one adactrl application -> its ServeConfig: the
    application's `args`, the file's http_options host and port, then `overrides` (flags)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no Serve config file at {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{path} is not valid YAML: {err}") from None
    apps = [a for a in (data or {}).get("applications") or [] if isinstance(a, dict) and a.get("import_path") == IMPORT_PATH]
    if len(apps) != 1:
        raise ValueError(f"{path} must hold exactly one application with import_path {IMPORT_PATH}, found {len(apps)}")
    http = {k: v for k, v in ((data.get("http_options") or {}).items()) if k in ("host", "port")}
    return ServeConfig.from_args({**http, **(apps[0].get("args") or {}), **overrides})
