"""docker/ checked statically (this machine cannot pull images nor run a Docker daemon): every Dockerfile passes
hadolint, the compose file validates against the Compose specification's JSON schema (vendored by
check-jsonschema: no download), and the compose file's services, ports, URLs and environment match what
``recsys.settings`` reads, so the production topology cannot drift from the platform (docs/production.md).

Each check is shown to fail on a broken input too (the ``*_fails_*`` tests and ``_broken`` below)."""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from dataclasses import fields
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from recsys import credentials
from recsys.serving.control import CONTROL_HEADER, RESTRICTED_APIS
from recsys.settings import NON_SETTING_VARIABLES, PROJECT_ROOT, Settings, env_name, load_settings

DOCKER = PROJECT_ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
SECRETS_EXAMPLE = DOCKER / "secrets.example"
BIN = Path(sys.executable).parent
DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))

# The topology of issue 11, each compose service with its local twin: the service of the distributed topology
# (`RECSYS_TOPOLOGY=distributed recsys stack up`) that runs the same engine; docs/production.md's table.
TOPOLOGY = {
    "postgres": "postgres",
    **{f"redis-{n}": "redis" for n in range(1, 7)},
    "redis-cluster-init": "redis",
    "celery-broker": "broker",
    "mlflow": "mlflow",
    "airflow-init": "airflow",
    "airflow-api-server": "airflow",
    "airflow-scheduler": "airflow",
    "airflow-dag-processor": "airflow",
    "airflow-triggerer": "airflow",
    "airflow-worker-default": "airflow",
    "airflow-worker-gpu": "airflow",
    "dask-scheduler": "dask",
    "dask-worker-1": "dask",
    "dask-worker-2": "dask",
    "triton-1": "triton",
    "triton-2": "triton",
    "api": "api",
    "events": "events",
}
ONE_SHOT = {"redis-cluster-init", "airflow-init"}
# Variables the images and env files may set that are not settings: the services' own (Airflow, MLflow's server,
# Postgres, Celery), never a RECSYS_* name (those must be settings).
FOREIGN_PREFIXES = ("AIRFLOW__", "AIRFLOW_HOME", "POSTGRES_", "CELERY_BROKER_PASSWORD", "MLFLOW_AUTH_CONFIG_PATH",
                    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "MLFLOW_FLASK_SERVER_SECRET_KEY", "MLFLOW_BACKEND_STORE_URI")
# The secrets of recsys.credentials that have no setting: the variable of their service that carries them instead.
UNSET_SECRET_VARIABLES = {
    "MLFLOW_FLASK_SECRET": "MLFLOW_FLASK_SERVER_SECRET_KEY",
    "AIRFLOW_JWT_SECRET": "AIRFLOW__API_AUTH__JWT_SECRET",
    "AIRFLOW_SECRET_KEY": "AIRFLOW__API__SECRET_KEY",
    "POSTGRES_PASSWORD": "POSTGRES_PASSWORD",
    "BROKER_PASSWORD": "CELERY_BROKER_PASSWORD",
}
SECRET_WORDS = re.compile(r"PASSWORD|TOKEN|SECRET|_KEY$|_CONN$|BROKER_URL|RESULT_BACKEND|STORE_URI")
# Which setting each published port is (a service's own port settings, read from the environment it sets).
PORT_SETTINGS = {
    "mlflow": ("mlflow_port",),
    "airflow-api-server": ("airflow_port",),
    "triton-1": ("triton_http_port", "triton_grpc_port", "triton_metrics_port"),
    "api": ("api_port",),
}
DASK_DASHBOARD = 8787  # Dask's own default, no setting of the platform
KNOWN = {env_name(f.name) for f in fields(Settings)} | set(NON_SETTING_VARIABLES)


def load_compose(text: str | None = None) -> dict:
    return yaml.safe_load(COMPOSE.read_text() if text is None else text)


def env_file_variables(name: str) -> dict[str, str]:
    """The variables of ``docker/secrets.example/<name>``, each with a placeholder value."""
    path = SECRETS_EXAMPLE / Path(name).name
    out = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value or "placeholder"
    return out


def service_env(service: dict) -> dict[str, str]:
    """What the container's process sees from the compose file: its env files (placeholders) and environment."""
    env: dict[str, str] = {}
    for name in service.get("env_file") or []:
        env.update(env_file_variables(name if isinstance(name, str) else name["path"]))
    env.update({k: str(v) for k, v in (service.get("environment") or {}).items()})
    return env


# --- the problems each drift check finds (a list of messages: empty when the compose file agrees) ---------------
def topology_problems(compose: dict) -> list[str]:
    services = set(compose["services"])
    return ([f"service {s!r} of the topology is missing" for s in sorted(set(TOPOLOGY) - services)]
            + [f"service {s!r} is not in the topology (tests/docker TOPOLOGY, docs/production.md)"
               for s in sorted(services - set(TOPOLOGY))])


def variable_problems(compose: dict) -> list[str]:
    problems = []
    for name, service in compose["services"].items():
        for variable in service_env(service):
            if variable.startswith("RECSYS_") or variable.startswith("MLFLOW_TRACKING_"):
                if variable not in KNOWN:
                    problems.append(f"{name}: {variable} is no setting of recsys.settings")
            elif not variable.startswith(FOREIGN_PREFIXES):
                problems.append(f"{name}: {variable} is neither a setting nor a known variable of the services")
        for variable in service.get("environment") or {}:
            if SECRET_WORDS.search(variable) and not variable.endswith(("_FILE", "_PATH", "_USERNAME")):
                problems.append(f"{name}: secret {variable} written in the compose file (it belongs in an env file)")
    return problems


def settings_of(name: str, service: dict) -> Settings:
    return load_settings({k: v for k, v in service_env(service).items() if k in KNOWN})


def port_problems(compose: dict) -> list[str]:
    problems = []
    for name, service in compose["services"].items():
        allowed = {getattr(settings_of(name, service), f) for f in PORT_SETTINGS.get(name, ())}
        if name == "dask-scheduler":
            allowed = {DASK_DASHBOARD}
        for spec in service.get("ports") or []:
            if isinstance(spec, dict):  # the long syntax
                host_ip, host, container = spec.get("host_ip", ""), spec.get("published", 0), spec.get("target", 0)
            else:
                parts = str(spec).split(":")
                host_ip, host, container = ([""] * (3 - len(parts)) + parts) if len(parts) < 3 else parts
                host = host or container  # "8310": published on a port Docker picks, on every interface
            if host_ip != "127.0.0.1":
                problems.append(f"{name}: port {spec} is published beyond loopback")
            if int(host) != int(container):
                problems.append(f"{name}: port {spec} is published under another number")
            if int(container) not in allowed:
                problems.append(f"{name}: port {container} is none of its settings' ports {sorted(allowed)}")
    return problems


def _command_port(service: dict, flag: str = "--port") -> int | None:
    command = service.get("command")
    text = " ".join(command) if isinstance(command, list) else str(command or "")
    match = re.search(rf"{flag}[ =]\"?(\d+)", text)
    return int(match.group(1)) if match else None


def url_problems(compose: dict) -> list[str]:
    """Every service URL a setting holds names a service of the compose file on the port that service serves."""
    services = compose["services"]

    def serves(target: str) -> set[int]:
        service = services.get(target)
        if service is None:
            return set()
        # what the service binds: its port settings for the platform's servers, else its command's --port
        s = settings_of(target, service)
        own = {"mlflow": s.mlflow_port, "airflow-api-server": s.airflow_port, "api": s.api_port,
               "events": s.events_metrics_port}
        if target in own:
            return {own[target]}
        if target.startswith("triton-"):
            return {s.triton_http_port, s.triton_grpc_port}
        return {_command_port(service)} - {None}

    problems = []
    for name, service in services.items():
        env = service_env(service)
        if name in ("api", "mlflow", "airflow-api-server", "events") or name.startswith("triton-"):
            # a server's own port setting must be the port its command binds, where the command names one
            bound = _command_port(service)
            s = settings_of(name, service)
            own = {"api": s.api_port, "mlflow": s.mlflow_port, "airflow-api-server": s.airflow_port,
                   "events": s.events_metrics_port}.get(name)
            if bound is not None and own is not None and bound != own:
                problems.append(f"{name}: its command binds {bound}, its settings say {own}")
        for variable in ("RECSYS_REDIS_URL", "MLFLOW_TRACKING_URI", "RECSYS_AIRFLOW_URL", "RECSYS_TRITON_URL",
                         "RECSYS_API_URL", "RECSYS_EVENTS_WORKER_URL", "RECSYS_DASK_SCHEDULER_ADDRESS",
                         "AIRFLOW__CORE__EXECUTION_API_SERVER_URL"):
            if variable not in env:
                continue
            for url in map(urlsplit, env[variable].split(",")):  # RECSYS_TRITON_URL: every replica
                if url.hostname not in services:
                    problems.append(f"{name}: {variable} names {url.hostname!r}, no service of the compose file")
                elif url.port not in serves(url.hostname):
                    problems.append(f"{name}: {variable} names port {url.port} of {url.hostname}, which serves "
                                    f"{sorted(serves(url.hostname))}")
    return problems


def health_and_volume_problems(compose: dict) -> list[str]:
    problems = []
    declared = set(compose.get("volumes") or {})
    used = set()
    for name, service in compose["services"].items():
        check = service.get("healthcheck") or {}
        if name not in ONE_SHOT and (not check.get("test") or check.get("disable") or check["test"] == ["NONE"]):
            problems.append(f"{name}: no healthcheck")
        for volume in service.get("volumes") or []:
            source = str(volume).split(":")[0]
            if source.startswith((".", "/")):
                continue
            used.add(source)
            if source not in declared:
                problems.append(f"{name}: volume {source!r} is not a named volume of the compose file")
    problems += [f"volume {v!r} is declared but no service uses it" for v in sorted(declared - used)]
    return problems


def image_problems(compose: dict) -> list[str]:
    problems = []
    for name, service in compose["services"].items():
        image = service.get("image", "")
        if image.startswith("recsys-"):
            continue  # built here: some service of the same image says how (checked below)
        repository, _, tag = image.rpartition(":")
        if not repository or tag in ("", "latest"):
            problems.append(f"{name}: image {image!r} is not pinned by a tag")
    built = {s["image"]: s.get("build") for s in compose["services"].values() if s.get("image", "").startswith("recsys-")}
    builds = {s["image"]: s["build"] for s in compose["services"].values() if s.get("build")}
    for image in built:
        if image not in builds:
            problems.append(f"image {image} is used but no service builds it")
        elif not (DOCKER / ".." / builds[image]["dockerfile"]).resolve().exists():
            problems.append(f"image {image}: {builds[image]['dockerfile']} does not exist")
    return problems


def gpu_problems(compose: dict) -> list[str]:
    problems = []
    for name in ("airflow-worker-gpu", "triton-1", "triton-2"):
        service = compose["services"].get(name, {})
        devices = (((service.get("deploy") or {}).get("resources") or {}).get("reservations") or {}).get("devices") or []
        if not any("gpu" in (d.get("capabilities") or []) for d in devices):
            problems.append(f"{name}: reserves no GPU")
    worker = compose["services"].get("airflow-worker-gpu", {})
    queue = settings_of("airflow-worker-gpu", worker).merlin_queue
    if queue == "default" or _queues(worker) != {queue}:
        problems.append(f"airflow-worker-gpu: consumes {sorted(_queues(worker))}, not the queue RECSYS_GPU_QUEUE={queue!r}")
    if _queues(compose["services"].get("airflow-worker-default", {})) != {"default"}:
        problems.append("airflow-worker-default: does not consume the default queue")
    return problems


def _queues(service: dict) -> set[str]:
    command = list(service.get("command") or [])
    return set(command[command.index("--queues") + 1].split(",")) if "--queues" in command else set()


CHECKS = (topology_problems, variable_problems, port_problems, url_problems, health_and_volume_problems,
          image_problems, gpu_problems)


# --- the tests --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_passes_hadolint(dockerfile):
    result = subprocess.run([str(BIN / "hadolint"), "--no-color", str(dockerfile)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_three_images_exist():
    assert {p.name for p in DOCKERFILES} == {"control.Dockerfile", "merlin.Dockerfile", "triton.Dockerfile"}


def test_hadolint_fails_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "bad.Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install curl\n")
    result = subprocess.run([str(BIN / "hadolint"), "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "DL3007" in result.stdout  # `latest`


def _check_jsonschema(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path)],
                          capture_output=True, text=True, timeout=120)


def test_compose_file_validates_against_the_compose_spec():
    result = _check_jsonschema(COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_spec_validation_fails_a_broken_file(tmp_path):
    broken = tmp_path / "compose.yaml"
    broken.write_text(COMPOSE.read_text().replace("    restart: unless-stopped\n", "    restart: unless-stopped\n    replicas: two\n", 1))
    result = _check_jsonschema(broken)
    assert result.returncode != 0 and "replicas" in result.stdout + result.stderr


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_compose_file_agrees_with_the_settings(check):
    assert check(load_compose()) == []


def _broken(mutate) -> dict:
    compose = copy.deepcopy(load_compose())
    mutate(compose)
    return compose


@pytest.mark.parametrize("check, mutate, expected", [
    (topology_problems, lambda c: c["services"].pop("triton-2"), "triton-2"),
    (topology_problems, lambda c: c["services"].__setitem__("extra", {"image": "x:1"}), "extra"),
    (variable_problems, lambda c: c["services"]["api"]["environment"].__setitem__("RECSYS_API_PROT", "1"), "RECSYS_API_PROT"),
    (variable_problems, lambda c: c["services"]["api"]["environment"].__setitem__("RECSYS_API_TOKEN", "x"), "secret"),
    (port_problems, lambda c: c["services"]["api"].__setitem__("ports", ["0.0.0.0:8310:8310"]), "loopback"),
    (port_problems, lambda c: c["services"]["api"].__setitem__("ports", ["8310:8310"]), "loopback"),
    (port_problems, lambda c: c["services"]["api"].__setitem__("ports", [{"target": 8310, "published": 8310}]), "loopback"),
    (port_problems, lambda c: c["services"]["api"].__setitem__("ports", ["127.0.0.1:8311:8311"]), "8311"),
    (port_problems, lambda c: c["services"]["api"]["environment"].__setitem__("RECSYS_API_PORT", "9000"), "8310"),
    (url_problems, lambda c: c["services"]["mlflow"]["environment"].__setitem__("RECSYS_MLFLOW_PORT", "5051"), "5050"),
    (url_problems, lambda c: c["services"]["events"]["environment"].__setitem__("RECSYS_REDIS_URL", "redis://redis-9:6390/0"), "redis-9"),
    (url_problems, lambda c: c["services"]["airflow-api-server"].__setitem__("command", ["airflow", "api-server", "--port", "8281"]), "8281"),
    (health_and_volume_problems, lambda c: c["services"]["events"].pop("healthcheck"), "events"),
    (health_and_volume_problems, lambda c: c["volumes"].pop("mlflow-data"), "mlflow-data"),
    (image_problems, lambda c: c["services"]["postgres"].__setitem__("image", "postgres:latest"), "postgres"),
    (gpu_problems, lambda c: c["services"]["airflow-worker-gpu"].pop("deploy"), "GPU"),
    (gpu_problems, lambda c: c["services"]["airflow-worker-gpu"].__setitem__("command", ["airflow", "celery", "worker", "--queues", "default"]), "queue"),
])
def test_each_drift_check_fails_on_a_broken_compose_file(check, mutate, expected):
    problems = check(_broken(mutate))
    assert problems and any(expected in p for p in problems), problems


def test_every_secret_of_the_platform_has_its_env_file_and_none_is_filled_in():
    variables = {}
    for path in SECRETS_EXAMPLE.glob("*.env"):
        for key, value in env_file_variables(path.name).items():
            variables[key] = value
    for secret in credentials.ALL:
        name = [n for n, v in vars(credentials).items() if v is secret][0]
        wanted = secret.env or UNSET_SECRET_VARIABLES[name]
        assert wanted in variables, f"{name} ({wanted}) has no place in docker/secrets.example"
    # the examples hold no value of a secret (only URLs with a placeholder password)
    for key, value in variables.items():
        if SECRET_WORDS.search(key) and not key.endswith(("_CONN", "_URL", "_URI", "RESULT_BACKEND")):
            assert value == "placeholder", f"{key} has a value in docker/secrets.example"
    # every env file a service names exists as an example; the real ones are never committed
    for name, service in load_compose()["services"].items():
        for env_file in service.get("env_file") or []:
            assert env_file.startswith("secrets/") and (SECRETS_EXAMPLE / Path(env_file).name).exists(), (name, env_file)
    assert "docker/secrets/" in (PROJECT_ROOT / ".gitignore").read_text()


def test_each_platform_service_loads_its_settings():
    """The environment each service gets is valid for recsys.settings (no bad value, a known variable each)."""
    platform = 0
    for name, service in load_compose()["services"].items():
        s = settings_of(name, service)  # raises SettingError naming a bad value
        if "RECSYS_REDIS_URL" in service_env(service):
            platform += 1
            assert s.redis_cluster and not s.embedded["redis"], name
    assert platform >= 10


def test_triton_entrypoint_restricts_what_publishing_unlocks():
    text = (DOCKER / "triton-entrypoint.sh").read_text()
    assert f'apis="{",".join(RESTRICTED_APIS)}"' in text
    assert f'header="{CONTROL_HEADER}"' in text
    assert "--model-control-mode=explicit" in text and "--load-model='*'" in text


def test_images_install_from_the_lock_and_pin_their_bases():
    for dockerfile in DOCKERFILES:
        text = dockerfile.read_text()
        assert "uv sync --frozen" in text, dockerfile.name
        assert "COPY pyproject.toml uv.lock" in text, dockerfile.name
        uv = re.search(r"ARG UV_VERSION=(\S+)", text)
        makefile = re.search(r"UV_VERSION := (\S+)", (PROJECT_ROOT / "Makefile").read_text())
        assert uv and uv.group(1) == makefile.group(1), dockerfile.name
        for base in re.findall(r"ARG \w+_IMAGE=(\S+)", text):
            assert re.search(r":\d", base), f"{dockerfile.name}: base {base} not pinned by a version tag"
    production = (PROJECT_ROOT / "docs" / "production.md").read_text()
    for base in re.findall(r"ARG \w+_IMAGE=(\S+)", "".join(p.read_text() for p in DOCKERFILES)):
        assert base in production, f"docs/production.md does not name the base image {base}"
    for service in TOPOLOGY:
        assert f"`{service}`" in production, f"docs/production.md does not map {service}"


def test_every_compose_service_has_a_local_twin_in_the_distributed_topology():
    from recsys import stack

    assert set(TOPOLOGY.values()) == set(stack.SERVICE_NAMES), set(TOPOLOGY.values()) ^ set(stack.SERVICE_NAMES)
