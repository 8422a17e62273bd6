# Triton for production: NVIDIA's Triton 24.10 image (Triton 2.51, the version of the lock's tritonclient and of
# the local wheel's server) with its TensorFlow backend, which serves the native `tensorflow_savedmodel` flavour
# of the query tower and ranker (the repository writer's flavour="tensorflow"), beside the python-backend `recsys`
# model, whose stub runs the Merlin runtime's interpreter (the `merlin` extra, from uv.lock).
# Build from the repository root:  docker build -f docker/triton.Dockerfile -t recsys-triton .
# The control key is no part of the image: docker/triton-entrypoint.sh takes it from the environment at start.
ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:24.10-py3
FROM ${TRITON_IMAGE}

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG UV_VERSION=0.13.8
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_INSTALL_DIR=/opt/recsys/python \
    UV_PROJECT_ENVIRONMENT=/opt/recsys/merlin
RUN python3 -m pip install --no-cache-dir "uv==${UV_VERSION}" \
    && uv python install 3.11
WORKDIR /src
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --extra merlin --python 3.11 --no-install-project
COPY recsys ./recsys
RUN uv sync --frozen --no-dev --extra merlin --python 3.11 --no-editable

# The python backend's stub for Python 3.11, from the lock's nvidia-pytriton wheel (the image's own stub is
# built for its system Python); the four-stage model then imports the Merlin runtime's TensorFlow, FAISS, redis-py.
RUN stub="$(/opt/recsys/merlin/bin/python -c 'import pathlib, pytriton; print(pathlib.Path(pytriton.__file__).parent / "tritonserver/python_backend_stubs/3.11/triton_python_backend_stub")')" \
    && cp "${stub}" /opt/tritonserver/backends/python/triton_python_backend_stub \
    && ln -s "$(/opt/recsys/merlin/bin/python -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))')" /opt/recsys/python-lib

COPY docker/triton-entrypoint.sh /usr/local/bin/recsys-triton
RUN groupadd --system --gid 50000 recsys \
    && useradd --system --uid 50000 --gid recsys --home-dir /var/lib/recsys --create-home recsys \
    && chmod 0755 /usr/local/bin/recsys-triton
# the stub links against libpython3.11 (recsys/stack/triton.py puts the same folder on LD_LIBRARY_PATH)
ENV PATH=/opt/recsys/merlin/bin:${PATH} \
    LD_LIBRARY_PATH=/opt/recsys/python-lib:${LD_LIBRARY_PATH} \
    PYTHONUNBUFFERED=1 \
    RECSYS_HOME=/var/lib/recsys \
    RECSYS_MERLIN_PYTHON=/opt/recsys/merlin/bin/python
USER 50000:50000
WORKDIR /var/lib/recsys
EXPOSE 8300 8301 8302
HEALTHCHECK --interval=15s --timeout=5s --retries=5 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8300/v2/health/ready', timeout=5)"]
ENTRYPOINT ["/usr/local/bin/recsys-triton"]
