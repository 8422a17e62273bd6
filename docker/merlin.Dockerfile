# The GPU worker: an Airflow Celery worker of the `gpu` queue whose training tasks run in the Merlin runtime
# (TensorFlow 2.12.1, NVTabular 23.08, Merlin Models 23.12: the exact pins of the `merlin` extra, from uv.lock),
# on NVIDIA's Merlin TensorFlow image (CUDA, the NVIDIA container runtime's driver hooks).
# Two environments, as on a developer's machine: /opt/recsys/control (Airflow, the worker) and
# /opt/recsys/merlin (RECSYS_MERLIN_PYTHON: what `@jobs.merlin_task` runs).
# Build from the repository root:  docker build -f docker/merlin.Dockerfile -t recsys-merlin .
# Checked statically only here (hadolint, tests/docker); never built on this machine (docs/production.md).
ARG MERLIN_IMAGE=nvcr.io/nvidia/merlin/merlin-tensorflow:23.08
FROM ${MERLIN_IMAGE}

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG UV_VERSION=0.13.8
# The project needs Python 3.11 (pyproject's requires-python); uv installs its own build of it, so the
# image's system Python (and the TensorFlow built for it) stays untouched.
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_INSTALL_DIR=/opt/recsys/python
RUN python3 -m pip install --no-cache-dir "uv==${UV_VERSION}" \
    && uv python install 3.11
WORKDIR /src
COPY pyproject.toml uv.lock README.md ./
RUN UV_PROJECT_ENVIRONMENT=/opt/recsys/merlin uv sync --frozen --no-dev --extra merlin --python 3.11 --no-install-project \
    && UV_PROJECT_ENVIRONMENT=/opt/recsys/control uv sync --frozen --no-dev --extra control --python 3.11 --no-install-project
COPY recsys ./recsys
RUN UV_PROJECT_ENVIRONMENT=/opt/recsys/merlin uv sync --frozen --no-dev --extra merlin --python 3.11 --no-editable \
    && UV_PROJECT_ENVIRONMENT=/opt/recsys/control uv sync --frozen --no-dev --extra control --python 3.11 --no-editable

# The GPU training path: the TensorFlow 2.12 wheel of the lock loads CUDA 11.8 and cuDNN 8.6 (TensorFlow's
# install guide for 2.12: nvidia-cudnn-cu11==8.6.0.163 beside it); outside the lock because only this
# image needs it (the CPU environments of make demo / make test never load it).
ARG CUDNN_WHEEL=nvidia-cudnn-cu11==8.6.0.163
RUN uv pip install --python /opt/recsys/merlin/bin/python --no-cache "${CUDNN_WHEEL}" \
    && ln -s "$(/opt/recsys/merlin/bin/python -c 'import nvidia.cudnn, os; print(os.path.dirname(nvidia.cudnn.__file__))')/lib" /opt/recsys/cudnn-lib

RUN groupadd --system --gid 50000 recsys \
    && useradd --system --uid 50000 --gid recsys --home-dir /var/lib/recsys --create-home recsys
COPY dags /opt/recsys/dags
COPY plugins /opt/recsys/plugins
ENV PATH=/opt/recsys/control/bin:${PATH} \
    LD_LIBRARY_PATH=/opt/recsys/cudnn-lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH} \
    PYTHONUNBUFFERED=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    TF_FORCE_GPU_ALLOW_GROWTH=true \
    RECSYS_HOME=/var/lib/recsys \
    RECSYS_MERLIN_PYTHON=/opt/recsys/merlin/bin/python \
    RECSYS_GPU_QUEUE=gpu \
    AIRFLOW_HOME=/var/lib/recsys/airflow \
    AIRFLOW__CORE__DAGS_FOLDER=/opt/recsys/dags \
    AIRFLOW__CORE__PLUGINS_FOLDER=/opt/recsys/plugins \
    AIRFLOW__CORE__LOAD_EXAMPLES=False
USER 50000:50000
WORKDIR /var/lib/recsys
# Healthy when the Merlin runtime imports and TensorFlow answers (`GPU` on a GPU host: recsys.training.keras_utils).
HEALTHCHECK --interval=60s --timeout=60s --retries=3 \
    CMD ["/opt/recsys/merlin/bin/python", "-c", "import tensorflow as tf; tf.config.list_physical_devices('GPU')"]
CMD ["airflow", "celery", "worker", "--queues", "gpu"]
