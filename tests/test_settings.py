"""Settings come from keyword arguments, LORAFLOW_* variables and YAML; secrets stay hidden."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from loraflow.errors import ConfigError
from loraflow.settings import Settings, get_settings, load_settings, mask_url, reset


def test_defaults_live_under_home(loraflow_home: Path) -> None:
    settings = get_settings()
    assert settings.home == loraflow_home.resolve()
    assert settings.storage_url == (loraflow_home / "storage").resolve().as_uri()
    assert settings.tracking_uri == f"sqlite:///{loraflow_home.resolve() / 'mlflow.db'}"
    assert settings.validation.max_rows == 100_000


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORAFLOW_STORAGE_URI", "s3://bucket/prefix")
    monkeypatch.setenv("LORAFLOW_VALIDATION__MAX_ROWS", "500")
    reset()
    settings = get_settings()
    assert settings.storage_url == "s3://bucket/prefix"
    assert settings.validation.max_rows == 500


def test_yaml_file_is_read_and_env_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "stack.yaml"
    config.write_text("storage_uri: s3://from-yaml/x\nvalidation:\n  duplicates: error\n")
    monkeypatch.setenv("LORAFLOW_CONFIG", str(config))
    settings = load_settings()
    assert settings.storage_url == "s3://from-yaml/x"
    assert settings.validation.duplicates == "error"
    monkeypatch.setenv("LORAFLOW_STORAGE_URI", "file:///tmp/env-wins")
    assert load_settings().storage_url == "file:///tmp/env-wins"


def test_missing_config_file_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORAFLOW_CONFIG", "/nonexistent/stack.yaml")
    with pytest.raises(ConfigError, match=r"/nonexistent/stack\.yaml"):
        load_settings()


def test_bad_values_name_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORAFLOW_STORAGE_URI", "ftp://user:hunter2@host/x")
    with pytest.raises(ConfigError, match="storage_uri") as caught:
        load_settings()
    assert "hunter2" not in str(caught.value)
    monkeypatch.delenv("LORAFLOW_STORAGE_URI")
    with pytest.raises(ConfigError, match=r"validation\.max_rows"):
        load_settings(validation={"max_rows": 0})


def test_secrets_never_reach_reprs_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings(
        s3_access_key_id="AKIAEXAMPLE",
        s3_secret_access_key="s3-secret-value",
        s3_session_token="session-token-value",
        mlflow_tracking_uri="https://alice:mlflow-password@mlflow.example.com",
        s3_endpoint_url="http://minio:minio-password@127.0.0.1:9000",
    )
    with caplog.at_level(logging.INFO):
        logging.getLogger("loraflow.test").info("settings: %s / %r", settings, settings)
    rendered = [str(settings), repr(settings), caplog.text, settings.model_dump_json()]
    for text in rendered:
        for secret in ("s3-secret-value", "session-token-value", "mlflow-password"):
            assert secret not in text
    assert "minio-password" not in repr(settings)
    assert settings.s3_secret_access_key.get_secret_value() == "s3-secret-value"


def test_mask_url() -> None:
    assert mask_url("https://u:p@h:8080/x") == "https://u:***@h:8080/x"
    assert mask_url("https://h/x") == "https://h/x"
    assert mask_url(None) is None


def test_prefect_api_url_is_applied_by_entry_points() -> None:
    from prefect.settings import PREFECT_API_URL

    from loraflow.jobs import prefect_api

    before = PREFECT_API_URL.value()
    with prefect_api(Settings(prefect_api_url="http://127.0.0.1:4299/api")):
        assert PREFECT_API_URL.value() == "http://127.0.0.1:4299/api"
    assert PREFECT_API_URL.value() == before
    with prefect_api(Settings()):
        assert PREFECT_API_URL.value() == before


def test_the_ephemeral_prefect_api_gets_time_to_start_unless_prefect_is_told(
    tmp_path: Path,
) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS as STARTUP

    from loraflow.jobs import EPHEMERAL_START_SECONDS, prefect_api

    home = Settings(home=tmp_path)  # no stack runs there: Prefect's ephemeral API
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        with prefect_api(home):
            assert STARTUP.value() == EPHEMERAL_START_SECONDS > 20  # Prefect's own: 20 s
        with temporary_settings(updates={STARTUP: 45}), prefect_api(home):
            assert STARTUP.value() == 45  # a user's setting stands
        with prefect_api(Settings(prefect_api_url="http://127.0.0.1:4299/api")):
            assert STARTUP.value() == 20  # a server of one's own: nothing to start
