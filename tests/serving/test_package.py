"""The serving core runs without Ray and without the serve extra's HTTP stack: every module of
adactrl.serving and the `serve` command import neither (tests/orchestration/test_layers.py checks
ray for every core module; this adds FastAPI, which only the `serve` extra installs)."""

import json
import pkgutil
import subprocess
import sys

import adactrl.serving


def test_the_serving_core_imports_no_ray_and_no_http_stack():
    modules = [m.name for m in pkgutil.walk_packages(adactrl.serving.__path__, "adactrl.serving.")]
    assert {"adactrl.serving.engine", "adactrl.serving.requests", "adactrl.serving.budget"} <= set(modules)
    script = (f"import importlib, json, sys\nfor name in {[*modules, 'adactrl.commands.serve']!r}:\n"
              "    importlib.import_module(name)\n"
              "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & {'ray', 'fastapi', 'starlette'})))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
