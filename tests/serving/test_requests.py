"""Request parsing: every bad request is refused with its status and a message that says what to change."""

import base64
import json
import pickle

import pytest

from adactrl.serving.requests import (
    MAX_PAYLOAD_BYTES,
    RequestError,
    parse_chat,
    parse_infer_json,
    parse_infer_multipart,
)
from tests.serving.conftest import PNG, PROMPT, png_base64


def infer(**fields) -> bytes:
    return json.dumps({"image": png_base64(), "prompt": PROMPT, "budget_ms": 200, **fields}).encode()


def chat(content=None, **fields) -> bytes:
    """The body the `openai` client sends for a text + image_url user message."""
    content = content or [{"type": "text", "text": PROMPT},
                          {"type": "image_url", "image_url": {"url": "data:image/png;base64," + png_base64()}}]  # fmt: skip
    body = {"model": "adactrl", "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": content}],
            "latency_budget_ms": 150, "max_tokens": 3, "temperature": 0.0, **fields}  # fmt: skip
    return json.dumps(body).encode()


def refused(parse, *args) -> RequestError:
    with pytest.raises(RequestError) as info:
        parse(*args)
    return info.value


def test_a_json_request_with_a_base64_image_or_a_data_url():
    request = parse_infer_json(infer(best_effort=True, max_new_tokens=2))
    assert (request.prompt, request.budget_ms, request.best_effort, request.max_new_tokens) == (PROMPT, 200.0, True, 2)
    assert request.image.mode == "RGB" and request.image.size == (48, 48)
    assert parse_infer_json(infer(image="data:image/png;base64," + png_base64())).image.size == (48, 48)


def multipart(**parts: bytes) -> bytes:
    """A multipart/form-data body with boundary b0, as `curl -F` sends it."""
    body = b""
    for name, data in parts.items():
        filename = b'; filename="c.png"\r\nContent-Type: image/png' if name == "image" else b""
        body += b'--b0\r\nContent-Disposition: form-data; name="' + name.encode() + b'"' + filename + b"\r\n\r\n" + data + b"\r\n"
    return body + b"--b0--\r\n"


def test_a_multipart_upload_keeps_the_image_bytes_exactly():
    body = multipart(image=PNG, prompt=PROMPT.encode(), budget_ms=b"150", best_effort=b"true")
    request = parse_infer_multipart('multipart/form-data; boundary="b0"', body)
    assert (request.prompt, request.budget_ms, request.best_effort) == (PROMPT, 150.0, True)
    assert request.image.tobytes() == parse_infer_json(infer()).image.tobytes()


@pytest.mark.parametrize(("parts", "message"), [
    ({"prompt": PROMPT.encode(), "budget_ms": b"150"}, "no image"),
    ({"image": b"GIF89a broken", "prompt": PROMPT.encode(), "budget_ms": b"150"}, "does not decode"),
    ({"image": PNG, "prompt": PROMPT.encode(), "budget_ms": b"nan"}, "finite"),
    ({"image": PNG, "prompt": b"", "budget_ms": b"150"}, "prompt is empty"),
    ({"image": PNG, "prompt": PROMPT.encode(), "budget_ms": b"150", "deadline": b"1"}, "unknown field(s) deadline"),
])  # fmt: skip
def test_bad_multipart_requests_are_refused(parts, message):
    assert message in str(refused(parse_infer_multipart, "multipart/form-data; boundary=b0", multipart(**parts)))


def test_the_openai_chat_shape():
    request = parse_chat(chat())
    assert (request.prompt, request.budget_ms, request.max_new_tokens) == (PROMPT, 150.0, 3)
    assert request.image.size == (48, 48)


@pytest.mark.parametrize(("body", "status", "message"), [
    (json.dumps({"prompt": PROMPT, "budget_ms": 200}).encode(), 400, "no image"),
    (infer(image=base64.b64encode(b"not an image").decode()), 400, "does not decode"),
    (infer(image="%%%"), 400, "not valid base64"),
    (infer(budget_ms=0), 400, "above 0"),
    (infer(budget_ms=-5), 400, "above 0"),
    (infer(budget_ms=float("nan")), 400, "finite"),
    (infer(budget_ms="fast"), 400, "number of milliseconds"),
    (infer(prompt="  "), 400, "prompt is empty"),
    (infer(budget=200), 400, "unknown field(s) budget"),
    (json.dumps({"image": "A" * MAX_PAYLOAD_BYTES}).encode(), 413, "above the limit"),
    (b"{not json", 400, "not valid JSON"),
    (b"[1, 2]", 400, "JSON object"),
])  # fmt: skip
def test_bad_infer_requests_are_refused_with_a_clear_message(body, status, message):
    error = refused(parse_infer_json, body)
    assert error.status == status and message in str(error)


@pytest.mark.parametrize(("body", "message"), [
    (chat(content=[{"type": "text", "text": PROMPT}]), "exactly one image_url"),
    (chat(content=[{"type": "text", "text": PROMPT}, {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]),
     "data: URL"),
    (chat(latency_budget_ms=None), "no budget"),
    (chat(latency_budget_ms=float("nan")), "finite"),
    (chat(stream=True), "stream"),
    (chat(n=2), "n must be 1"),
    (chat(logprobs=True), "unknown field(s) logprobs"),
    (chat(content=[{"type": "image_url", "image_url": {"url": "data:image/png;base64," + png_base64()}}]),
     "prompt is empty"),
])  # fmt: skip
def test_bad_chat_requests_are_refused_with_a_clear_message(body, message):
    assert message in str(refused(parse_chat, body))


def test_the_status_survives_the_trip_from_a_replica():
    error = pickle.loads(pickle.dumps(RequestError("too big", 413)))
    assert (type(error), error.status, str(error)) == (RequestError, 413, "too big")
