"""The `gyoza_server` pytest fixture (gyoza.pytest_plugin), as users' CI uses it."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import httpx
import pytest


def test_gyoza_server_fixture_is_a_running_server_with_a_client(gyoza_server):
    assert gyoza_server.url.startswith("http://127.0.0.1:")
    assert httpx.get(f"{gyoza_server.url}/healthz").json() == {"status": "ok"}
    with gyoza_server.client() as client:
        client.upsert_definition({"name": "hello", "version": "1", "image": "busybox"})
        assert client.get_definition("hello")["version"] == "1"


def test_gyoza_server_fixture_starts_each_test_with_an_empty_database(gyoza_server):
    with gyoza_server.client() as client:
        assert client.list_definitions() == []
        assert client.list_runs()["runs"] == []


@pytest.mark.gyoza_server_config(api_keys=("ci-key",))
def test_gyoza_server_config_marker_sets_server_options(gyoza_server):
    assert httpx.get(f"{gyoza_server.url}/workers").status_code == 401
    with gyoza_server.client() as client:  # the client carries the first key
        assert client.list_workers() == []


def test_plugin_module_imports_without_loading_the_server():
    code = "import sys, gyoza.pytest_plugin; print('gyoza.server' in sys.modules, 'uvicorn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_plugin_is_registered_by_entry_point_for_a_project_without_conftest(tmp_path):
    (tmp_path / "test_users_ci.py").write_text(textwrap.dedent("""
        def test_deploy_then_run(gyoza_server):
            client = gyoza_server.client()
            client.upsert_definition({"name": "resize", "version": "1", "image": "me/resize:1"})
            run = client.create_run_from_definition("resize", {"width": 64})
            assert run["state"] == "PENDING"
    """))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed" in proc.stdout
