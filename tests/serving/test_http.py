"""`adactrl serve`'s HTTP API on Ray Serve, on loopback, in the session's Ray instance, called
with a real HTTP client: /v1/infer (JSON and multipart), /v1/chat/completions in the openai
client's request shape, /health, /v1/models, 429 and best_effort, and bad requests as 4xx."""

import json
import socket
import threading

import pytest
import requests

from tests.serving.conftest import PNG, PROMPT, png_base64
from tests.serving.test_requests import chat



def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def url(ray_local, checkpoint):
    from ray import serve

    from adactrl.orchestration.serve import start_app
    from adactrl.serving.config import ServeConfig

    config = ServeConfig(controller=checkpoint, port=free_port(), replica_cpus=1, num_threads=1, calibration_runs=3)
    yield start_app(config)
    serve.shutdown()


def post_infer(url: str, **fields) -> requests.Response:
    return requests.post(f"{url}/v1/infer", json={"image": png_base64(), "prompt": PROMPT, **fields}, timeout=60)


def test_health_and_models(url):
    health = requests.get(f"{url}/health", timeout=30).json()
    assert health["status"] == "ok" and health["replicas"] == 1 and health["cheapest_ms"] > 0
    models = requests.get(f"{url}/v1/models", timeout=30).json()
    assert [m["id"] for m in models["data"]] == ["adactrl"]


def test_infer_answers_with_knobs_latency_and_the_verdict(url):
    body = post_infer(url, budget_ms=60_000).json()
    assert body["answer"] and body["plan"] == "controller"
    assert set(body["knobs"]) == {"tier", "insertion", "top_k", "num_blocks", "blocks"}
    latency = body["latency_ms"]
    assert {"queue", "controller", "vision", "decode", "model", "total"} <= set(latency)
    # end to end: the total holds the queue and the model time
    assert latency["total"] >= latency["queue"] + latency["model"] - 1.0
    assert body["met_budget"] == (latency["total"] <= body["budget_ms"])


def test_infer_takes_a_multipart_upload(url):
    response = requests.post(f"{url}/v1/infer", files={"image": ("color.png", PNG, "image/png")},
                             data={"prompt": PROMPT, "budget_ms": "60000"}, timeout=60)  # fmt: skip
    assert response.status_code == 200, response.text
    assert response.json()["answer"]


def test_chat_completions_in_the_openai_shape(url):
    response = requests.post(f"{url}/v1/chat/completions", data=chat(latency_budget_ms=60_000),
                             headers={"Content-Type": "application/json"}, timeout=60)  # fmt: skip
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "chat.completion" and body["choices"][0]["message"]["role"] == "assistant"
    assert body["choices"][0]["message"]["content"] and body["usage"]["completion_tokens"] <= 3
    assert body["adactrl"]["knobs"] and body["adactrl"]["latency_ms"]["total"] > 0


def test_too_small_a_budget_is_a_429_with_retry_after_or_runs_cheapest_with_best_effort(url):
    refused = post_infer(url, budget_ms=0.5)
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
    assert "best_effort" in refused.json()["error"]["message"]
    served = post_infer(url, budget_ms=0.5, best_effort=True)
    assert served.status_code == 200 and served.json()["plan"] == "cheapest" and not served.json()["met_budget"]


def test_the_queue_counts_against_the_budget(url):
    """Four requests at once on one replica: the last waits for the three before it."""
    bodies = []
    threads = [threading.Thread(target=lambda: bodies.append(post_infer(url, budget_ms=60_000).json())) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    waits = sorted(b["latency_ms"]["queue"] for b in bodies)
    assert len(bodies) == 4 and waits[-1] >= 2 * min(b["latency_ms"]["model"] for b in bodies)
    # the controller planned for what the wait (and the hand-off reserve) left
    assert all(59_000 < b["remaining_ms"] <= 60_000 - b["latency_ms"]["queue"] + 0.01 for b in bodies)


@pytest.mark.parametrize(("fields", "status", "message"), [
    ({"image": None}, 400, "no image"),
    ({"image": "bm90IGFuIGltYWdl"}, 400, "does not decode"),
    ({"budget_ms": 0}, 400, "above 0"),
    ({"budget_ms": float("nan")}, 400, "finite"),
    ({"budget_ms": -1}, 400, "above 0"),
    ({"prompt": ""}, 400, "prompt is empty"),
    ({"deadline_ms": 5}, 400, "unknown field(s) deadline_ms"),
    ({"prompt": "what color is the zebra ?"}, 400, "zebra"),
    ({"image": "A" * (9 * 1024 * 1024)}, 413, "above the limit"),
])  # fmt: skip
def test_bad_requests_are_4xx_with_a_clear_message(url, fields, status, message):
    body = {"image": png_base64(), "prompt": PROMPT, "budget_ms": 60_000, **fields}
    body = {k: v for k, v in body.items() if v is not None}
    response = requests.post(f"{url}/v1/infer", data=json.dumps(body), headers={"Content-Type": "application/json"},
                             timeout=60)  # fmt: skip
    assert response.status_code == status and message in response.json()["error"]["message"]


def test_the_ingress_counts_what_it_answered(url):
    health = requests.get(f"{url}/health", timeout=30).json()
    assert health["served"] >= 7 and health["rejected"] >= 1 and health["in_flight"] == 0
    assert health["violation_rate"] == health["missed"] / health["served"]
