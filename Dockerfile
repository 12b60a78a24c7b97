# Serving image: NVIDIA's Triton Inference Server with the w2v runtime and model repository,
# and the w2v gRPC streaming service started beside it.
#
#   docker build -t w2v-serve --build-arg MODEL_DIR=path/to/exported/model .
#   docker run --gpus all -p 50051:50051 -p 8000:8000 -p 8001:8001 -p 8002:8002 -p 9100:9100 w2v-serve
#
# MODEL_DIR is a model directory written by `w2v export CKPT --out DIR` (default: the bundled
# model). The acoustic model runs on Triton's native ONNX Runtime backend with the TensorRT
# execution accelerator (ACOUSTIC_BACKEND=onnxruntime, default) or on the TensorRT backend
# (ACOUSTIC_BACKEND=tensorrt: the plan is built by trtexec on the serving GPU at first start,
# since a plan is tied to the GPU and TensorRT version). Decoding and streaming state run in the
# Python-backend models on CPU instances.
# Not built on the development machines (they run no Docker engine); the same repository runs
# there on the nvidia-pytriton wheel's tritonserver (`w2v triton`).
FROM nvcr.io/nvidia/tritonserver:24.10-py3

ENV PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /opt/w2v

# The runtime only: no torch, no training code is needed to serve.
COPY pyproject.toml README.md ./
COPY w2v_serve ./w2v_serve
COPY model_repository ./model_repository
RUN python3 -m pip install --upgrade pip \
 && python3 -m pip install . \
 && python3 -m pip uninstall -y onnxruntime \
 && python3 -m pip install onnxruntime-gpu

ARG MODEL_DIR=w2v_serve/models/default
ARG ACOUSTIC_BACKEND=onnxruntime
COPY ${MODEL_DIR} /opt/w2v/model
RUN python3 -c "from w2v_serve.triton.repository import write_repository; \
write_repository('/opt/w2v/model', '/models', native='${ACOUSTIC_BACKEND}')"

COPY docker/entrypoint.sh /usr/local/bin/w2v-entrypoint
RUN chmod +x /usr/local/bin/w2v-entrypoint

# 8000/8001/8002: Triton HTTP / gRPC / metrics; 50051: w2v gRPC service; 9100: its metrics.
EXPOSE 8000 8001 8002 50051 9100
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
  CMD curl -fsS localhost:8000/v2/health/ready && python3 -m w2v_serve.service.healthcheck localhost:50051 || exit 1
ENTRYPOINT ["/usr/local/bin/w2v-entrypoint"]
