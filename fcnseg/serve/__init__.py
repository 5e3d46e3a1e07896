"""`fcnseg serve`: an HTTP API and a web page over a checkpoint (optional extra `.[serve]`).

`create_app(checkpoint, ...)` (``fcnseg.serve.app``) returns the ASGI app;
``fcnseg.serve.server.run(app, host="127.0.0.1", port=8000)`` serves it as ``fcnseg serve``
does (connection cap, header deadline, drain on SIGTERM). Any ASGI server works too, e.g.
``uvicorn.run(app, ...)``, without the header deadline.
"""

from __future__ import annotations


def create_app(*args, **kwargs):
    """See ``fcnseg.serve.app.create_app`` (imported on use: FastAPI is an optional extra)."""
    from fcnseg.serve.app import create_app as _create_app

    return _create_app(*args, **kwargs)


__all__ = ["create_app"]
