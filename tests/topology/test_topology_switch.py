"""One home runs one topology at a time: a start with the other ``RECSYS_TOPOLOGY`` is refused while its services
run (it would leave them serving beside the new ones), and ``recsys stack down`` stops either topology whole."""

from __future__ import annotations

import pytest


def test_a_home_runs_one_topology_and_down_stops_either(tmp_path):
    from recsys import stack
    from recsys.errors import ConfigError
    from recsys.settings import load_settings, replace

    embedded = load_settings({"RECSYS_HOME": str(tmp_path), **stack.free_ports_env(distributed=False)})
    distributed = replace(embedded, topology="distributed", **{
        name.removeprefix("RECSYS_").lower(): int(port) for name, port in stack.free_ports_env(distributed=True).items()
        if name in ("RECSYS_CELERY_BROKER_PORT", "RECSYS_POSTGRES_PORT")})
    try:
        stack.up(embedded, only=["redis"])
        with pytest.raises(ConfigError, match=r"runs the embedded topology \(redis running\).*RECSYS_TOPOLOGY=embedded"):
            stack.up(distributed, only=["broker"])
        assert not any(service.processes[0].running() for service in stack.services(distributed, ["broker"]))
        assert stack.down(distributed) == ["redis"]  # the other topology's Redis, stopped from the distributed settings
        assert not stack.services(embedded, ["redis"])[0].processes[0].running()
    finally:
        stack.down(embedded)
