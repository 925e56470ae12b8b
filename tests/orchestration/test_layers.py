"""Imports point one way: the core library never imports Ray, the learner or the rollout workers;
only the orchestration layer composes them."""

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import adactrl

REPO = Path(__file__).resolve().parents[2]
LAYERS_ABOVE_CORE = ("ray", "learner", "rollout_workers")


def core_modules() -> list[str]:
    """Every module of the adactrl package outside adactrl.orchestration (the CLI included: it
    imports the orchestration layer only inside a command's run)."""
    names = [m.name for m in pkgutil.walk_packages(adactrl.__path__, "adactrl.")]
    return sorted(n for n in names if not n.startswith("adactrl.orchestration"))


def test_core_modules_import_no_ray_learner_or_rollout_workers():
    modules = core_modules()
    assert "adactrl.training.loop" in modules and "adactrl.cli" in modules
    script = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & {set(LAYERS_ABOVE_CORE)!r})))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_the_orchestration_layer_composes_them():
    script = ("import json, sys, adactrl.orchestration.driver, adactrl.orchestration.ray_backend\n"
              "print(json.dumps(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    loaded = {m.split(".")[0] for m in json.loads(out.stdout.strip().splitlines()[-1])}
    assert set(LAYERS_ABOVE_CORE) <= loaded
