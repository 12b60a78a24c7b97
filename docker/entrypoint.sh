#!/usr/bin/env bash
# Start tritonserver on /models, wait until it is ready, then the w2v gRPC service in front of it.
# SIGTERM stops the service first (it drains open streams), then Triton.
set -euo pipefail

plan=/models/acoustic/1/model.plan
if grep -q 'tensorrt_plan' /models/acoustic/config.pbtxt && [ ! -f "$plan" ]; then
  /usr/src/tensorrt/bin/trtexec --onnx=/models/acoustic/1/model.onnx --saveEngine="$plan" --fp16 \
    --minShapes=audio:1x400,lengths:1 --optShapes=audio:8x160000,lengths:8 \
    --maxShapes=audio:16x480000,lengths:16
fi

tritonserver --model-repository=/models --http-port=8000 --grpc-port=8001 --metrics-port=8002 &
triton=$!
for _ in $(seq 1 240); do
  curl -fsS localhost:8000/v2/health/ready >/dev/null 2>&1 && break
  kill -0 "$triton" 2>/dev/null || { echo "tritonserver exited" >&2; exit 1; }
  sleep 0.5
done

w2v serve --backend triton --triton-url localhost:8001 --model /models/acoustic/1 \
  --host 0.0.0.0 --port "${W2V_PORT:-50051}" --metrics-port "${W2V_METRICS_PORT:-9100}" "$@" &
service=$!

shutdown() {
  kill -TERM "$service" 2>/dev/null || true
  wait "$service" 2>/dev/null || true
  kill -TERM "$triton" 2>/dev/null || true
  wait "$triton" 2>/dev/null || true
}
trap shutdown TERM INT
wait -n "$service" "$triton"
shutdown
