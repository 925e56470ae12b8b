"""Budget-aware serving without Ray: what a request may hold and how it is refused (`requests`),
the end-to-end budget arithmetic (`budget`), the model and controller that answer
(`engine`), and the response bodies (`responses`). `adactrl.orchestration.serve` puts them
behind HTTP on Ray Serve; everything here runs and is tested in one process."""

from adactrl.serving.budget import Admission, admit
from adactrl.serving.config import ServeConfig
from adactrl.serving.requests import MAX_PAYLOAD_BYTES, InferRequest, PayloadTooLarge, RequestError

__all__ = [
    "MAX_PAYLOAD_BYTES",
    "Admission",
    "InferRequest",
    "PayloadTooLarge",
    "RequestError",
    "ServeConfig",
    "admit",
]
