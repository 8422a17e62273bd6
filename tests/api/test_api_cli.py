"""``recsys api token | send-event`` against the running API service (its settings in the environment)."""

from __future__ import annotations

import argparse
import json

import pytest
from api_helpers import API_ENV_CLEARED, log_length

from shared_helpers import patched_environ


def run(*argv: str) -> int:
    """One ``recsys api ...`` command through the API's own parser (``recsys.api.cli.register``)."""
    from recsys.api.cli import register

    parser = argparse.ArgumentParser(prog="recsys")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture()
def environ(api, api_settings):
    with patched_environ({**api_settings.as_env(), **API_ENV_CLEARED}):
        yield


def test_token_names_the_file_and_shows_the_token_only_when_asked(environ, api_settings, token, capsys):
    from recsys.api.token import token_file

    assert run("api", "token") == 0
    assert capsys.readouterr().out.strip() == str(token_file(api_settings))
    assert run("api", "token", "--show") == 0
    assert capsys.readouterr().out.strip() == token


def test_send_event_goes_through_the_api(environ, store, capsys):
    from recsys.errors import RecsysError

    before = log_length(store)
    assert run("api", "send-event", "--user", "1003", "--item", "5011", "--type", "click") == 0
    assert json.loads(capsys.readouterr().out)["accepted"] == 1
    assert log_length(store) == before + 1
    with pytest.raises(RecsysError, match=r"the API answered 422: event 0: event_type: 'like' is not one of"):
        run("api", "send-event", "--user", "1003", "--item", "5011", "--type", "like")
    with pytest.raises(RecsysError, match=r"item_id: 424242 is not in the served catalogue"):
        run("api", "send-event", "--user", "1003", "--item", "424242", "--type", "view", "--timestamp", "now")
    assert log_length(store) == before + 1


def test_an_external_api_needs_its_token(api_settings):
    from recsys.api.token import api_token
    from recsys.errors import ConfigError
    from recsys.settings import replace

    external = replace(api_settings, api_url="https://recs.example")
    with pytest.raises(ConfigError, match="RECSYS_API_TOKEN"):
        api_token(external)
    assert api_token(replace(external, api_token="from-the-operator")) == "from-the-operator"
