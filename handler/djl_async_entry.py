"""DJL Serving entry point in async mode; ``loraship build --batching continuous`` copies this file into a
model dir as ``model.py``. DJL's async engine awaits these functions, one task per request."""

from handler.async_service import AsyncHandlerService

_service = AsyncHandlerService()


async def handle(inputs):
    return await _service.handle(inputs)


async def register_adapter(inputs):
    return await _service.adapter_call(inputs, "register")


async def update_adapter(inputs):
    return await _service.adapter_call(inputs, "update")


async def unregister_adapter(inputs):
    return await _service.adapter_call(inputs, "unregister")


async def cancel_request(inputs):
    """loraship's host calls this when a streamed request's client went away (real DJL Serving never does)."""
    return await _service.cancel(inputs)
