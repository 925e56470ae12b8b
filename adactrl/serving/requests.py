"""What a request to `adactrl serve` may hold, parsed and checked before it queues for a model.

Every refusal is a `RequestError` whose message says what to change, answered with its HTTP
status (4xx) before the request costs model time. The rules (docs/serving.md):

- the body is at most MAX_PAYLOAD_BYTES (413 above it);
- a field the endpoint does not know is refused with its name (400): a misspelt `budget_ms`
  would otherwise be dropped in silence. The chat endpoint knows the OpenAI fields an existing
  client sends, and ignores those that cannot change a greedy, single-answer reply;
- one image, decodable, at most MAX_IMAGE_PIXELS; a prompt that is not empty; a budget that is a
  finite number of milliseconds above 0.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from typing import Any

from PIL import Image

from adactrl.models.preprocessing import MAX_IMAGE_PIXELS, to_rgb

MAX_PAYLOAD_BYTES = 8 * 1024 * 1024
"""The largest request body (8 MiB: a 6 MB image as base64, with room for the JSON around it)."""
MAX_PROMPT_CHARS = 2000

INFER_FIELDS = ("image", "prompt", "budget_ms", "best_effort", "max_new_tokens")
CHAT_USED = ("messages", "latency_budget_ms", "best_effort", "max_tokens", "max_completion_tokens", "model", "n",
             "stream")  # fmt: skip
CHAT_IGNORED = ("temperature", "top_p", "seed", "user", "frequency_penalty", "presence_penalty", "stop")
"""Sampling fields that an OpenAI client may send: the reply is greedy, so they change nothing."""


class RequestError(ValueError):
    """A request refused before it runs: `status` is the HTTP status, the message what to change."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status

    def __reduce__(self):  # a replica returns it to the ingress: keep the status across pickling
        return RequestError, (str(self), self.status)


class PayloadTooLarge(RequestError):
    def __init__(self, size: int) -> None:
        super().__init__(f"the request body has {size:,} bytes, above the limit of {MAX_PAYLOAD_BYTES:,} "
                         "(adactrl.serving.requests.MAX_PAYLOAD_BYTES); send a smaller image", status=413)  # fmt: skip


@dataclass(frozen=True)
class InferRequest:
    """One checked request: an RGB image, a prompt, and its end-to-end budget."""

    image: Image.Image
    prompt: str
    budget_ms: float
    best_effort: bool = False
    """Run the cheapest plan when the budget left is below its latency, instead of a 429."""
    max_new_tokens: int | None = None
    """At most this many answer tokens (None: the server's --max_new_tokens; never more)."""


def check_size(size: int) -> None:
    if size > MAX_PAYLOAD_BYTES:
        raise PayloadTooLarge(size)


def parse_infer_json(body: bytes) -> InferRequest:
    """`POST /v1/infer` with a JSON body: {"image": base64 or data URL, "prompt", "budget_ms",
    optional "best_effort", "max_new_tokens"}."""
    fields = _json_object(body)
    _refuse_unknown(fields, INFER_FIELDS)
    if "image" not in fields:
        raise RequestError("no image: send 'image' as base64 (or a data: URL) in the JSON, or upload it as multipart")
    return _infer_request(decode_base64_image(fields["image"], "image"), fields)


def parse_infer_multipart(content_type: str, body: bytes) -> InferRequest:
    """`POST /v1/infer` as multipart/form-data: an `image` file part and the other fields as text."""
    parts = multipart_parts(content_type, body)
    _refuse_unknown(parts, INFER_FIELDS)
    if "image" not in parts:
        raise RequestError("no image: upload the image file in a form part named 'image'")
    fields: dict[str, Any] = {key: value.decode("utf-8", "replace") for key, value in parts.items() if key != "image"}
    for key in ("budget_ms", "max_new_tokens"):
        if key in fields:
            fields[key] = _number_text(fields[key], key)
    if "best_effort" in fields:
        fields["best_effort"] = fields["best_effort"].strip().lower() in ("1", "true", "yes")
    return _infer_request(decode_image(parts["image"]), fields)


def parse_chat(body: bytes) -> InferRequest:
    """`POST /v1/chat/completions`, the OpenAI request shape: the last user message's text is the
    prompt and its one `image_url` part a data: URL; the budget is `latency_budget_ms`."""
    fields = _json_object(body)
    _refuse_unknown(fields, CHAT_USED + CHAT_IGNORED)
    if fields.get("stream"):
        raise RequestError("stream: true is not supported; the answer is a few tokens, send stream: false")
    if fields.get("n", 1) != 1:
        raise RequestError(f"n must be 1 (one greedy answer per request), got {fields['n']!r}")
    messages = fields.get("messages")
    users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"] if isinstance(messages, list) else []
    if not users:
        raise RequestError("messages must be a list holding at least one {'role': 'user', 'content': [...]} message")
    content = users[-1].get("content")
    parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
    if not isinstance(parts, list) or not all(isinstance(p, dict) for p in parts):
        raise RequestError("the user message's content must be a string or a list of {'type': ...} parts")
    urls = [p.get("image_url") for p in parts if p.get("type") == "image_url"]
    if len(urls) != 1:
        raise RequestError(f"the last user message must hold exactly one image_url part, found {len(urls)}")
    url = urls[0].get("url") if isinstance(urls[0], dict) else urls[0]
    if not (isinstance(url, str) and url.startswith("data:")):
        raise RequestError("image_url must be a data: URL (data:image/png;base64,...); the server fetches nothing")
    prompt = " ".join(str(p.get("text", "")) for p in parts if p.get("type") == "text")
    limit = fields.get("max_completion_tokens", fields.get("max_tokens"))
    request = {"prompt": prompt, "budget_ms": fields.get("latency_budget_ms"), "max_new_tokens": limit,
               "best_effort": fields.get("best_effort", False)}  # fmt: skip
    if request["budget_ms"] is None:
        raise RequestError("no budget: send latency_budget_ms (milliseconds, end to end) in the request body")
    return _infer_request(decode_base64_image(url, "image_url"), request)


def decode_base64_image(value: Any, field: str) -> Image.Image:
    """base64 text, or a data: URL holding it, -> an RGB image."""
    if not isinstance(value, str) or not value:
        raise RequestError(f"{field} must be a non-empty base64 string or data: URL")
    if value.startswith("data:"):
        header, comma, value = value.partition(",")
        if not comma or not header.endswith(";base64"):
            raise RequestError(f"{field}: a data: URL must be data:image/<type>;base64,<data>")
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as err:
        raise RequestError(f"{field} is not valid base64 ({err})") from None
    return decode_image(data)


def decode_image(data: bytes) -> Image.Image:
    """Image file bytes (PNG, JPEG, ...) -> an RGB image; refused when they do not decode."""
    if not data:
        raise RequestError("the image is empty (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise RequestError(f"the image has {image.width}x{image.height} pixels, above the limit of "
                                   f"{MAX_IMAGE_PIXELS:,}; downscale it first")  # fmt: skip
            image.load()
            return to_rgb(image)
    except RequestError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise RequestError(f"the image does not decode ({err}); send a PNG or JPEG file") from None


def multipart_parts(content_type: str, body: bytes) -> dict[str, bytes]:
    """multipart/form-data -> {part name: raw bytes}; a name given twice is refused."""
    boundary = next((p.strip()[9:].strip('"') for p in content_type.split(";") if p.strip().startswith("boundary=")), "")
    if not boundary:
        raise RequestError("a multipart/form-data request needs a boundary in its Content-Type")
    parts: dict[str, bytes] = {}
    for chunk in body.split(b"--" + boundary.encode())[1:]:
        if chunk.startswith(b"--"):
            break  # the closing delimiter
        head, sep, data = chunk.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        name = BytesHeaderParser().parsebytes(head).get_param("name", header="content-disposition")
        if not sep or not isinstance(name, str):
            raise RequestError("a multipart part has no Content-Disposition name; use form-data fields")
        if name in parts:
            raise RequestError(f"the form field {name!r} is given twice; send it once")
        parts[name] = data.removesuffix(b"\r\n")
    return parts


def parse_budget(value: Any, field: str = "budget_ms") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(f"{field} must be a number of milliseconds, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise RequestError(f"{field} must be a finite number of milliseconds above 0, got {value}")
    return float(value)


def _infer_request(image: Image.Image, fields: dict[str, Any]) -> InferRequest:
    prompt = fields.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise RequestError("the prompt is empty: send the question as 'prompt' (text messages in chat)")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise RequestError(f"the prompt has {len(prompt)} characters, above the limit of {MAX_PROMPT_CHARS}")
    if "budget_ms" not in fields:
        raise RequestError("no budget: send budget_ms, the end-to-end latency budget in milliseconds")
    best_effort = fields.get("best_effort", False)
    if not isinstance(best_effort, bool):
        raise RequestError(f"best_effort must be true or false, got {best_effort!r}")
    limit = fields.get("max_new_tokens")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise RequestError(f"the token limit must be a whole number >= 1, got {limit!r}")
    return InferRequest(image, prompt.strip(), parse_budget(fields["budget_ms"]), best_effort, limit)


def _json_object(body: bytes) -> dict[str, Any]:
    check_size(len(body))
    try:
        fields = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RequestError(f"the body is not valid JSON ({err})") from None
    if not isinstance(fields, dict):
        raise RequestError(f"the body must be a JSON object, got {type(fields).__name__}")
    return fields


def _refuse_unknown(fields: dict[str, Any], known: tuple[str, ...]) -> None:
    unknown = sorted(set(fields) - set(known))
    if unknown:
        raise RequestError(f"unknown field(s) {', '.join(unknown)}; this endpoint takes {', '.join(known)}")


def _number_text(text: str, field: str) -> float | int:
    try:
        return int(text) if text.strip().lstrip("-").isdigit() else float(text)
    except ValueError:
        raise RequestError(f"{field} must be a number, got {text!r}") from None
