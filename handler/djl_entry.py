"""DJL Serving entry point; ``loraship build`` copies this file into a model dir as ``model.py``.

DJL imports the entry point more than once at start-up, so nothing is loaded here: the model is
loaded on DJL's first (initialisation) call. DJL finds the adapter hooks by name.
"""

from handler.service import HandlerService

_service = HandlerService()


def handle(inputs):
    return _service.handle(inputs)


def register_adapter(inputs):
    return _service.adapter_call(inputs, "register")


def update_adapter(inputs):
    return _service.adapter_call(inputs, "update")


def unregister_adapter(inputs):
    return _service.adapter_call(inputs, "unregister")
