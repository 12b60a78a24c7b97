"""The one error type the service turns into a gRPC status: a code and a message for the client."""

from __future__ import annotations

import grpc


class ServiceError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"


def invalid_argument(message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.INVALID_ARGUMENT, message)


def unavailable(message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.UNAVAILABLE, message)


def compute_exhausted(budget_s: float) -> ServiceError:
    """A stream that spent its budget of server compute time."""
    return ServiceError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"stream is over its budget of {budget_s:g} s of server compute time")
