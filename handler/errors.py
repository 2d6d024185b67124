"""The few error types the handler raises, mapped to HTTP status codes in one place."""


class HandlerError(Exception):
    """Base class: an error that reaches the client with ``status`` and a JSON body."""

    status = 500

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field

    def to_json(self) -> dict:
        body = {"error": self.message, "code": self.status, "type": type(self).__name__}
        if self.field is not None:
            body["field"] = self.field
        return body


class BadRequest(HandlerError):
    """The request is malformed or asks for something out of range."""

    status = 400


class NotFound(HandlerError):
    """The request names something that does not exist (an adapter, a pipeline)."""

    status = 404


class Conflict(HandlerError):
    """The request clashes with the current state (an adapter name that is already registered)."""

    status = 409


class PayloadTooLarge(HandlerError):
    status = 413


class GenerationTimeout(HandlerError):
    """Generation ran out of its time budget (option.predict_timeout) before the request was done."""

    status = 504

    @classmethod
    def after(cls, seconds: float, tokens: int, predict_timeout: int) -> "GenerationTimeout":
        return cls(
            f"generation stopped after {seconds:.0f} s and {tokens} tokens, to answer within "
            f"option.predict_timeout ({predict_timeout} s): ask for fewer max_new_tokens or inputs"
        )


class Cancelled(HandlerError):
    """The request was ended before it was done: its client went away, or the server is shutting down."""

    status = 499  # nginx's "client closed request": nobody is left to read it


class ConfigError(HandlerError):
    """serving.properties (or a pipeline/adapter setting) is invalid: the model fails to load."""

    status = 500


def error_json(exc: BaseException) -> tuple[int, dict]:
    """Status and JSON body for any exception; unknown ones are a 500 that names their type. The message is
    one line: real DJL Serving puts it in the HTTP reason phrase, and answers 500 when it has a line break."""
    if isinstance(exc, HandlerError):
        code, body = exc.status, exc.to_json()
    elif isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":  # torch.cuda's
        code, body = 507, {"error": f"out of memory: {exc}", "code": 507, "type": type(exc).__name__}
    else:
        code, body = 500, {"error": f"{type(exc).__name__}: {exc}", "code": 500, "type": "InternalError"}
    body["error"] = " ".join(str(body["error"]).split())
    return code, body
