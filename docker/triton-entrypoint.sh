#!/usr/bin/env bash
# Starts tritonserver as recsys/stack/triton.py does locally: explicit model control, what the repository
# serves loaded at start, HTTP / gRPC / metrics on the settings' ports, the repository API (and logging,
# trace) behind the control key of recsys.serving.control. The key comes from the container's environment
# (RECSYS_TRITON_CONTROL_KEY, from the env file docker/secrets/triton.env), never from the image.
set -euo pipefail
: "${RECSYS_TRITON_CONTROL_KEY:?set RECSYS_TRITON_CONTROL_KEY (docker/secrets/triton.env)}"
apis="model-repository,logging,trace"
header="recsys-control-key"
exec tritonserver \
    --model-repository="${RECSYS_TRITON_REPOSITORY:-/var/lib/recsys/triton/repository}" \
    --model-control-mode=explicit \
    --load-model='*' \
    --http-port="${RECSYS_TRITON_HTTP_PORT:-8300}" \
    --grpc-port="${RECSYS_TRITON_GRPC_PORT:-8301}" \
    --metrics-port="${RECSYS_TRITON_METRICS_PORT:-8302}" \
    --allow-gpu-metrics=true \
    --strict-readiness=true \
    --exit-on-error=false \
    --http-restricted-api="${apis}:${header}=${RECSYS_TRITON_CONTROL_KEY}" \
    --grpc-restricted-protocol="${apis}:${header}=${RECSYS_TRITON_CONTROL_KEY}" \
    "$@"
