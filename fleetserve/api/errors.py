"""The server's error handling: every failure in the OpenAI error shape (fleetserve.wire.errors), plus the
client that went away before its answer was ready."""
from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from fleetserve.wire import error_handlers
from fleetserve.wire.error_handlers import error_response
from fleetserve.wire.errors import APIError


class ClientDisconnected(Exception):
    """The client went away before its answer was ready; its engine requests are already aborted."""


def install_error_handlers(app: FastAPI) -> None:
    error_handlers.install_error_handlers(app)

    @app.exception_handler(ClientDisconnected)
    async def _client_gone(_: Request, __: ClientDisconnected) -> JSONResponse:
        # Nobody reads this; 499 (nginx's "client closed request") keeps it out of the 5xx counts.
        return error_response(APIError(499, "the client closed the connection", None, "client_closed_request"))
