# The control plane: Airflow 3 (api-server, scheduler, dag-processor, triggerer, Celery worker of the
# `default` queue), MLflow, the recsys HTTP API and the event worker, from the repository's uv.lock
# (`uv sync --frozen --extra control`: the same lock the local `.envs/control` is built from).
# Build from the repository root:  docker build -f docker/control.Dockerfile -t recsys-control .
# No secret is baked in: every one comes from the environment at run time (docker/compose.yaml, docs/production.md).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# uv pinned as the Makefile pins it (UV_VERSION)
ARG UV_VERSION=0.13.8
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PROJECT_ENVIRONMENT=/opt/recsys/control \
    UV_PYTHON_DOWNLOADS=never
RUN pip install --no-cache-dir "uv==${UV_VERSION}"
WORKDIR /src
# Dependencies first (cached while only the code changes), then the project itself.
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --extra control --no-install-project
COPY recsys ./recsys
RUN uv sync --frozen --no-dev --extra control --no-editable

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="recsys-control" \
      org.opencontainers.image.description="recsys control plane: Airflow 3, MLflow, the HTTP API, the event worker"
RUN groupadd --system --gid 50000 recsys \
    && useradd --system --uid 50000 --gid recsys --home-dir /var/lib/recsys --create-home recsys
COPY --from=build /opt/recsys/control /opt/recsys/control
COPY dags /opt/recsys/dags
COPY plugins /opt/recsys/plugins
ENV PATH=/opt/recsys/control/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    RECSYS_HOME=/var/lib/recsys \
    RECSYS_HOST=0.0.0.0 \
    AIRFLOW_HOME=/var/lib/recsys/airflow \
    AIRFLOW__CORE__DAGS_FOLDER=/opt/recsys/dags \
    AIRFLOW__CORE__PLUGINS_FOLDER=/opt/recsys/plugins \
    AIRFLOW__CORE__LOAD_EXAMPLES=False
USER 50000:50000
WORKDIR /var/lib/recsys
# Each compose service names its own command and healthcheck; this one answers for the image alone.
HEALTHCHECK --interval=30s --timeout=5s --retries=3 CMD ["python", "-c", "import recsys.settings"]
CMD ["recsys", "--help"]
