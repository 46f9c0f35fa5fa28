"""Errors a service raises for the API to turn into 4xx replies that name the problem."""

from __future__ import annotations


class ServiceError(Exception):
    status_code = 400
    code = "bad_request"

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.message, self.param = message, param


class NotFound(ServiceError):
    status_code, code = 404, "not_found"


class Conflict(ServiceError):
    status_code, code = 409, "conflict"


class Unprocessable(ServiceError):
    status_code, code = 422, "unprocessable"


class NotReady(ServiceError):
    status_code, code = 503, "not_ready"
