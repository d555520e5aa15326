"""The error tree. Every failure a client can see is one of these; dialects render them.

    ImagegateError                      500 internal_error
    ├── BadRequest                      400 invalid_value
    │   ├── MissingParameter            400 missing_required_parameter
    │   ├── UnsupportedMimetype         400 unsupported_file_mimetype
    │   ├── InvalidImage                400 invalid_image
    │   ├── ImageTooLarge               400 image_too_large
    │   ├── InvalidImageUrl             400 invalid_image_url
    │   ├── InvalidCallbackUrl          400 invalid_callback_url
    │   ├── ModelNotSupported           400 model_not_supported
    │   └── IdempotencyKeyReused        422 idempotency_key_reused
    ├── AuthenticationFailed            401 invalid_api_key
    ├── InsufficientCredits             402 insufficient_credits
    ├── PermissionDenied                403 permission_denied
    ├── NotFound                        404 not_found
    │   └── ModelNotFound               404 model_not_found
    ├── Gone                            410 expired
    ├── Conflict                        409 too_many_active_tasks
    │   ├── IdempotencyInProgress       409 idempotency_key_in_progress
    │   └── IdempotencyAnswerNotKept    409 idempotency_answer_not_kept
    ├── RequestTimeout                  408 request_timeout
    ├── PayloadTooLarge                 413 request_too_large
    ├── RateLimited                     429 rate_limit_exceeded
    ├── Interrupted                     500 interrupted
    ├── StorageUnavailable              503 storage_unavailable
    ├── DatabaseUnavailable             503 database_unavailable
    └── EngineError                     502 upstream_error
        └── EngineTimeout               504 upstream_timeout

A dialect turns one of these into its own wire shape in exactly one place (its `error_body`).
Anything else that escapes a handler is a 500 whose detail never reaches the client.
"""

from __future__ import annotations


def excerpt(value: object, limit: int = 80) -> str:
    """`value` as an error message may echo it: at most `limit` characters, the cut marked with `…`."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class ImagegateError(Exception):
    """Base of every client-visible failure; `message` is safe to show to the client."""

    status = 500
    code = "internal_error"
    type = "server_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers: dict[str, str] = {}


class BadRequest(ImagegateError):
    """The request is malformed or a value is outside what the model accepts."""

    status = 400
    code = "invalid_value"
    type = "invalid_request_error"


class MissingParameter(BadRequest):
    """A required field is absent."""

    code = "missing_required_parameter"


class UnsupportedMimetype(BadRequest):
    """An input is not png, jpeg or webp (sniffed from its bytes)."""

    code = "unsupported_file_mimetype"


class InvalidImage(BadRequest):
    """An input claims to be an image but cannot be decoded."""

    code = "invalid_image"


class ImageTooLarge(BadRequest):
    """An input exceeds the byte or pixel limit (decompression bombs land here)."""

    code = "image_too_large"


class InvalidImageUrl(BadRequest):
    """An image URL was refused by the fetch rules, failed, or was too large."""

    code = "invalid_image_url"


class InvalidCallbackUrl(BadRequest):
    """A callback URL was refused by the address rules (it must be public)."""

    code = "invalid_callback_url"


class ModelNotSupported(BadRequest):
    """The model's channel cannot perform this kind of request."""

    code = "model_not_supported"


class IdempotencyKeyReused(BadRequest):
    """The Idempotency-Key was already used with a different request."""

    status = 422
    code = "idempotency_key_reused"


class AuthenticationFailed(ImagegateError):
    """The bearer key is missing, unknown or revoked."""

    status = 401
    code = "invalid_api_key"
    type = "authentication_error"


class InsufficientCredits(ImagegateError):
    """The key's available balance is below the request's price."""

    status = 402
    code = "insufficient_credits"
    type = "insufficient_quota"


class PermissionDenied(ImagegateError):
    """The key may not perform this operation."""

    status = 403
    code = "permission_denied"
    type = "permission_error"


class NotFound(ImagegateError):
    """The resource does not exist or belongs to another key."""

    status = 404
    code = "not_found"
    type = "invalid_request_error"


class Gone(ImagegateError):
    """The resource existed but has expired (a result file past its retention)."""

    status = 410
    code = "expired"
    type = "invalid_request_error"


class ModelNotFound(NotFound):
    """The model id is not in the catalog."""

    code = "model_not_found"


class Conflict(ImagegateError):
    """The key has too many active tasks."""

    status = 409
    code = "too_many_active_tasks"
    type = "invalid_request_error"


class IdempotencyInProgress(Conflict):
    """A request with this Idempotency-Key is still running."""

    code = "idempotency_key_in_progress"


class IdempotencyAnswerNotKept(Conflict):
    """A request with this Idempotency-Key succeeded, but its answer was not kept for a replay."""

    code = "idempotency_answer_not_kept"


class RequestTimeout(ImagegateError):
    """The request body stalled or arrived too slowly."""

    status = 408
    code = "request_timeout"
    type = "invalid_request_error"


class PayloadTooLarge(ImagegateError):
    """The request body exceeds the configured bound."""

    status = 413
    code = "request_too_large"
    type = "invalid_request_error"


class RateLimited(ImagegateError):
    """The key exceeded its requests per minute."""

    status = 429
    code = "rate_limit_exceeded"
    type = "rate_limit_error"


class Interrupted(ImagegateError):
    """The server stopped while the task ran (too many times for an async one; at all for a sync one)."""

    code = "interrupted"


class TakenOver(Interrupted):
    """The task's lease ran out while this process ran it, and it was ended or taken over elsewhere:
    this run's result is not the task's, and nothing was charged for it."""


class StorageUnavailable(ImagegateError):
    """The server's file storage (its data dir or object-storage bucket) failed: nothing the client did."""

    status = 503
    code = "storage_unavailable"


class DatabaseUnavailable(ImagegateError):
    """The server's database could not be reached: nothing the client did."""

    status = 503
    code = "database_unavailable"


class EngineError(ImagegateError):
    """The engine (or its upstream) failed to produce images."""

    status = 502
    code = "upstream_error"
    type = "server_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retryable: bool = True,
        retry_after: float | None = None,
        blames_channel: bool = True,
    ) -> None:
        super().__init__(message, param=param, code=code)
        self.retryable = retryable
        """Worth another attempt on the same channel (429, 5xx, timeouts, connection faults)."""
        self.retry_after = retry_after
        """Seconds the provider asked us to wait (`retry-after`), when it said."""
        self.blames_channel = blames_channel
        """Whether it counts toward opening the channel's circuit: not when this one request was too
        much for a working channel (a local model out of memory or out of time)."""


class EngineTimeout(EngineError):
    """The engine (or its upstream) did not answer in time."""

    status = 504
    code = "upstream_timeout"
