"""Settings are validated at start-up, all problems at once; the README documents them."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.settings import SettingsError, iter_fields, load_settings, settings_table
from tests.conftest import PROJECT


def test_defaults_need_nothing(tmp_path: Path) -> None:
    s = load_settings(env={"HABLA_BOT_DIR": str(PROJECT), "HABLA_SETTINGS": ""})
    assert (s.server.host, s.server.port) == ("127.0.0.1", 5005)
    assert s.store.tracker_store == "sqlite" and s.store.coordination == "embedded"
    assert s.data_dir == PROJECT / ".habla"


def test_every_problem_is_named_in_one_error(tmp_path: Path) -> None:
    env = {
        "HABLA_BOT_DIR": str(tmp_path),  # no domain.yml here
        "HABLA_PORT": "eighty",
        "HABLA_COORDINATION": "zookeeper",
        "HABLA_SEND_MAX_ATTEMPTS": "0",
        "HABLA_PUBLIC_URL": "bot.example.com",
        "TWILIO_ACCOUNT_SID": "XX123",
        "HABLA_SETTINGS": "",
    }
    with pytest.raises(SettingsError) as err:
        load_settings(env=env)
    text = str(err.value)
    for needle in ("server.port", "eighty", "store.coordination", "zookeeper"):
        assert needle in text
    env |= {"HABLA_PORT": "5005", "HABLA_COORDINATION": "redis"}
    with pytest.raises(SettingsError) as err:
        load_settings(env=env)
    problems = "\n".join(err.value.problems)
    for needle in (
        "HABLA_REDIS_URL is required",
        "HABLA_PUBLIC_URL",
        "starts with 'AC'",
        "set together",
        "max_attempts",
        "no domain.yml",
        "HABLA_MEDIA_SECRET is required",  # several servers speaking voice notes
    ):
        assert needle in problems
    assert len(err.value.problems) == 7


def test_file_then_environment_and_secrets_only_from_the_environment(tmp_path: Path) -> None:
    (tmp_path / "domain.yml").write_text("version: '3.1'\n")
    (tmp_path / "habla.yml").write_text(
        "server:\n  port: 6000\n  public_url: https://bot.example.com\nsend:\n  max_attempts: 3\n"
    )
    s = load_settings(env={"HABLA_BOT_DIR": str(tmp_path), "HABLA_SEND_MAX_ATTEMPTS": "7"})
    assert s.server.port == 6000 and s.public_base == "https://bot.example.com"
    assert s.send.max_attempts == 7  # the environment wins
    (tmp_path / "habla.yml").write_text("twilio:\n  auth_token: oops\nserver:\n  colour: blue\n")
    with pytest.raises(SettingsError) as err:
        load_settings(env={"HABLA_BOT_DIR": str(tmp_path)})
    text = str(err.value)
    assert "'twilio.auth_token' is a secret" in text and "TWILIO_AUTH_TOKEN" in text
    assert "oops" not in text  # a secret is never echoed
    assert "unknown setting 'server.colour'" in text


def test_readme_documents_every_setting() -> None:
    readme = (PROJECT / "README.md").read_text()
    assert settings_table() in readme, "run `make settings` and paste the table in the README"
    for _, field in iter_fields():
        assert field.metadata["env"] in readme
