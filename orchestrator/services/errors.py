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


class BudgetInfeasible(Unprocessable):
    """No expert fits the query's budget; `detail` names the budget and the cheapest options."""

    code = "infeasible_budget"

    def __init__(self, message: str, param: str, detail: dict[str, object]):
        super().__init__(message, param)
        self.detail = detail


class NotReady(ServiceError):
    status_code, code = 503, "not_ready"


class ModelUnavailable(ServiceError):
    """An expert's model cannot be used now (its weights gone since it was registered)."""

    status_code, code = 503, "model_unavailable"


class Busy(ServiceError):
    """Too many queries wait to be answered: the request is refused before anything is stored."""

    status_code, code = 503, "overloaded"
    retry_after_s = 5


class Unauthorized(ServiceError):
    status_code, code = 401, "invalid_api_key"


class Forbidden(ServiceError):
    status_code, code = 403, "permission_denied"


class RateLimited(ServiceError):
    status_code, code = 429, "rate_limit_exceeded"

    def __init__(self, message: str, retry_after_s: float):
        super().__init__(message)
        self.retry_after_s = retry_after_s
