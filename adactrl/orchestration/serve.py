"""`adactrl serve` on Ray Serve: one HTTP ingress and `num_replicas` model replicas.

    client --HTTP--> Serve proxy --> Ingress: read (size limit), parse, check, stamp the arrival
    Ingress --DeploymentHandle(request, arrival)--> ModelReplica (one request at a time):
        admit on the budget left after the wait, run the controller's plan (or the cheapest,
        or refuse at once) --ServeOutcome--> Ingress: JSON, 429 + Retry-After, metrics

The ingress is light (no model) and holds many requests; each replica runs one at a time, so a
request waits in Serve's queue for a free replica and that wait counts against its budget.
`build_app` is the application builder a Serve config file names (cluster/serve_config.yaml);
`run_serve` is the command's lifecycle.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from typing import Any

import ray
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve

from adactrl.orchestration.serve_metrics import ServeMetrics
from adactrl.serving.budget import REJECTED, QueueModel, admit
from adactrl.serving.config import IMPORT_PATH, ServeConfig
from adactrl.serving.engine import ServeOutcome, ServingEngine
from adactrl.serving.requests import (
    InferRequest,
    RequestError,
    check_size,
    parse_chat,
    parse_infer_json,
    parse_infer_multipart,
)
from adactrl.serving.responses import chat_body, error_body, infer_body, rejected_body

log = logging.getLogger("adactrl.serve")
APP_NAME = "adactrl"
MODEL_NAME = "adactrl"
"""The one model id /v1/models lists; chat requests may name it or leave `model` out."""
INGRESS_MAX_ONGOING = 1000

api = FastAPI(title="adactrl serve", description="budget-aware VQA on a frozen MoE VLM")


class ModelReplica:
    """A model and a controller copy (one per GPU, or CPU replicas); runs one request at a time."""

    def __init__(self, config: ServeConfig) -> None:
        self.engine = ServingEngine.load(config)
        log.info("replica ready: the cheapest plan's p95 here is %.2f ms", self.engine.cheapest_ms)

    def info(self) -> dict[str, Any]:
        return {"cheapest_ms": self.engine.cheapest_ms, "cheapest_plan": self.engine.cheapest.to_dict()}

    def __call__(self, request: InferRequest, arrived_s: float, reserve_ms: float) -> ServeOutcome | RequestError:
        try:
            return self.engine.answer(request, arrived_s, reserve_ms)
        except RequestError as err:  # returned, not raised: Ray would wrap it and lose the status
            return err


class Ingress:
    """The HTTP API (docs/serving.md): /v1/infer, /v1/chat/completions, /health, /v1/models."""

    def __init__(self, replica: Any, config: ServeConfig) -> None:
        self.replica = replica
        self.config = config
        self.metrics = ServeMetrics()
        self.queue = QueueModel(config.num_replicas)
        self.cheapest_ms: float | None = None
        """What the cheapest plan takes on the replicas now, as the latest answer reported it."""
        self.info: dict[str, Any] | None = None
        self._info_lock = asyncio.Lock()

    @api.get("/health")
    async def health(self) -> dict:
        # The replica's info is read once: asked again, it would queue behind the model's requests.
        info = {**await self._replica_info(), "cheapest_ms": self.cheapest_ms}
        return {"status": "ok", "replicas": self.config.num_replicas, "device": self.config.device,
                "in_flight": self.metrics.in_flight, **self.metrics.ledger.to_dict(), **info}  # fmt: skip

    @api.get("/v1/models")
    async def models(self) -> dict:
        return {"object": "list", "data": [{"id": MODEL_NAME, "object": "model", "created": 0, "owned_by": "adactrl",
                                            "controller": self.config.controller}]}  # fmt: skip

    @api.post("/v1/infer")
    async def infer(self, request: Request) -> JSONResponse:
        return await self._handle(request, "infer")

    @api.post("/v1/chat/completions")
    async def chat(self, request: Request) -> JSONResponse:
        return await self._handle(request, "chat")

    async def _handle(self, http: Request, route: str) -> JSONResponse:
        arrived = time.time()  # wall clock: the replica, maybe on another node, subtracts it from its own
        self.metrics.enter()
        try:
            try:
                request = await _parse(http, route)
                outcome = await self._run(request, arrived)
            except RequestError as err:
                self.metrics.bad_request(route, (time.time() - arrived) * 1000.0)
                return JSONResponse(error_body(str(err), err.status), status_code=err.status)
            total_ms = (time.time() - arrived) * 1000.0
            met = total_ms <= request.budget_ms
            self.metrics.answered(route, total_ms, outcome.queue_ms, rejected=outcome.rejected, met=met,
                                  knobs=outcome.knobs)  # fmt: skip
            if outcome.rejected:
                return JSONResponse(rejected_body(request, outcome), status_code=429,
                                    headers={"Retry-After": str(outcome.admission.retry_after_s)})  # fmt: skip
            if route == "chat":
                return JSONResponse(chat_body(request, outcome, total_ms, MODEL_NAME))
            return JSONResponse(infer_body(request, outcome, total_ms))
        finally:
            self.metrics.leave()

    async def _run(self, request: InferRequest, arrived: float) -> ServeOutcome:
        """Refused here when the expected wait would leave too little of the budget (docs/serving.md),
        else handed to a replica, which decides again on the wait it saw."""
        await self._replica_info()
        waited_ms = (time.time() - arrived) * 1000.0
        expected = waited_ms + self.queue.expected_wait_ms() + self.queue.overhead_ms
        early = admit(request.budget_ms, expected, self.cheapest_ms, request.best_effort)
        if early.plan == REJECTED:
            return ServeOutcome(early, waited_ms, self.cheapest_ms)
        self.queue.outstanding += 1
        try:
            outcome = await self.replica.remote(request, arrived, self.queue.overhead_ms)
        finally:
            self.queue.outstanding -= 1
        if isinstance(outcome, RequestError):
            raise outcome
        if not outcome.rejected:  # a refusal takes a replica a few ms: it says nothing of a request's service time
            self.queue.observe((time.time() - arrived) * 1000.0 - outcome.queue_ms, outcome.model_ms)
        self.cheapest_ms = outcome.cheapest_ms  # the replica's latest view: slower under load, back when it eases
        return outcome

    async def _replica_info(self) -> dict[str, Any]:
        async with self._info_lock:  # the first requests may come together; the answer is read once
            if self.info is None:
                self.info = await self.replica.info.remote()
                self.cheapest_ms = self.info["cheapest_ms"]
        return self.info


HTTPIngress = serve.ingress(api)(Ingress)
"""Ingress as Serve's ASGI deployment class. Made at import: serve.ingress turns the routes of
`api` into class-based views, and each replica's process imports this module afresh."""


async def _parse(http: Request, route: str) -> InferRequest:
    declared = http.headers.get("content-length", "")
    if declared.isdigit():
        check_size(int(declared))  # before reading a byte of it
    body, size = [], 0
    async for chunk in http.stream():
        size += len(chunk)
        check_size(size)
        body.append(chunk)
    data = b"".join(body)
    content_type = http.headers.get("content-type", "application/json")
    if route == "chat":
        return parse_chat(data)
    if content_type.startswith("multipart/form-data"):
        return parse_infer_multipart(content_type, data)
    if not content_type.startswith("application/json"):
        raise RequestError(f"Content-Type {content_type} is not accepted; send application/json or "
                           "multipart/form-data", status=415)  # fmt: skip
    return parse_infer_json(data)


def build_app(args: dict[str, Any] | ServeConfig) -> serve.Application:
    """The Serve application: a Serve config file's `args` (ServeConfig's fields), or a config."""
    config = args if isinstance(args, ServeConfig) else ServeConfig.from_args(dict(args))
    replica = serve.deployment(ModelReplica, name="ModelReplica", num_replicas=config.num_replicas,
                               max_ongoing_requests=1, max_constructor_retry_count=1,
                               ray_actor_options={"num_cpus": config.replica_cpus, "num_gpus": config.replica_gpus})  # fmt: skip
    ingress = serve.deployment(HTTPIngress, name="Ingress", max_ongoing_requests=INGRESS_MAX_ONGOING,
                               ray_actor_options={"num_cpus": 0})  # fmt: skip
    return ingress.bind(replica.bind(config), config)


def start_app(config: ServeConfig) -> str:
    """Start Serve's HTTP proxy on config.host:port in the connected Ray cluster and deploy the
    application; returns its URL once every replica has calibrated and /health answers."""
    serve.start(http_options={"host": config.host, "port": config.port})
    serve.run(build_app(config), name=APP_NAME, route_prefix="/", blocking=False)
    return f"http://{config.host}:{config.port}"


def run_serve(config: ServeConfig, ray_address: str | None = None) -> None:
    """`adactrl serve`: serve until Ctrl-C or SIGTERM. A Ray instance started here is shut down
    (Serve, its replicas and Ray's own processes); in a cluster joined with `ray_address`, only
    this application is deleted and the cluster, and Serve in it, keep running."""
    import os

    from adactrl.orchestration.ray_backend import start_ray

    joined = (ray_address or os.environ.get("RAY_ADDRESS")) is not None
    start_ray(ray_address, num_cpus=None)
    stop = threading.Event()
    # After ray.init: ours must be the handlers that stand.
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        url = start_app(config)
        print(f"adactrl serve: {config.num_replicas} replica(s) on {config.device} at {url} "
              "(POST /v1/infer, POST /v1/chat/completions, GET /health, GET /v1/models); Ctrl-C stops", flush=True)  # fmt: skip
        while not stop.wait(0.5):
            pass
        print("adactrl serve: stopping", flush=True)
    finally:
        try:
            if joined:
                serve.delete(APP_NAME)
            else:
                serve.shutdown()
        finally:
            ray.shutdown()  # a started instance stops with its processes; a joined cluster keeps running
            for sig, handler in previous.items():
                signal.signal(sig, handler)
