"""``python -m w2v_serve.service.healthcheck HOST:PORT``: exit 0 when the w2v gRPC service reports
SERVING through the standard gRPC health protocol (used by the Docker image's HEALTHCHECK)."""

from __future__ import annotations

import sys


def check(target: str, timeout_s: float = 3.0) -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""),
                                                              timeout=timeout_s)
        except grpc.RpcError as e:
            print(f"{target}: {e.code().name}: {e.details()}", file=sys.stderr)
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


if __name__ == "__main__":
    sys.exit(0 if check(sys.argv[1] if len(sys.argv) > 1 else "localhost:50051") else 1)
