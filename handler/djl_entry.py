"""DJL Serving entry point; ``loraship build`` copies this file into a model dir as ``model.py``.

DJL imports the entry point more than once at start-up, so nothing is loaded here: the model is
loaded on DJL's first (initialisation) call. DJL finds the adapter hooks by name.
"""

from handler.service import HandlerService

_service = HandlerService()


def handle(inputs):
    try:
        return _service.handle(inputs)
    except Exception as exc:
        if _service.options is not None:
            raise
        # The model failed to load. Answered (not raised), DJL logs the reason itself ("Failed to
        # initialize model: ..."); a raised error reaches its log only through the worker's stderr,
        # which DJL may stop reading before the traceback arrives.
        return _service.load_failure(exc)


def register_adapter(inputs):
    return _service.adapter_call(inputs, "register")


def update_adapter(inputs):
    return _service.adapter_call(inputs, "update")


def unregister_adapter(inputs):
    return _service.adapter_call(inputs, "unregister")
