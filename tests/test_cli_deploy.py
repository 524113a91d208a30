"""`gyoza deploy` against a real server: created / updated / unchanged / dry-run / invalid."""

from __future__ import annotations

import json
from pathlib import Path

from tests.cli_fakes import assert_one_error_line, gyoza

HELLO = """\
name = "hello"
version = "1"
image = "busybox:latest"
description = "says hello"

[constraints]
cpu_cores = 0.5
ram_mb = 64

[input_schema]
type = "object"
properties = { who = { type = "string", default = "world" } }
"""

TWO_OPS = """\
[[op]]
name = "first"
version = "1"
image = "busybox:latest"

[[op]]
name = "second"
version = "2.0"
image = "busybox:latest"
constraints = { gpus = 1, vram_mb = 16000 }
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_deploy_new_definition_prints_created_and_stores_it(gyoza_server, tmp_path):
    op_file = write(tmp_path / "hello.toml", HELLO)
    result = gyoza(gyoza_server.url, "deploy", str(op_file))
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("created")
    assert "hello 1" in result.stdout
    stored = gyoza_server.client().get_definition("hello", "1")
    assert stored["constraints"]["cpu_cores"] == 0.5
    assert stored["description"] == "says hello"


def test_deploy_same_file_again_prints_unchanged_and_does_not_resend(gyoza_server, tmp_path):
    op_file = write(tmp_path / "hello.toml", HELLO)
    gyoza(gyoza_server.url, "deploy", str(op_file))
    before = gyoza_server.client().get_definition("hello", "1")["updated_at"]
    result = gyoza(gyoza_server.url, "deploy", str(op_file))
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("unchanged")
    assert gyoza_server.client().get_definition("hello", "1")["updated_at"] == before


def test_deploy_changed_definition_prints_updated_with_the_changed_fields(gyoza_server, tmp_path):
    op_file = write(tmp_path / "hello.toml", HELLO)
    gyoza(gyoza_server.url, "deploy", str(op_file))
    write(op_file, HELLO.replace("ram_mb = 64", "ram_mb = 128"))
    result = gyoza(gyoza_server.url, "deploy", str(op_file))
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("updated")
    assert "(constraints)" in result.stdout
    assert gyoza_server.client().get_definition("hello", "1")["constraints"]["ram_mb"] == 128


def test_deploy_definition_with_webhook_secret_always_counts_as_updated(gyoza_server, tmp_path):
    text = HELLO + '\n[event_delivery]\nurl = "https://example.com/hook"\nsecret = "s3cret"\n'
    op_file = write(tmp_path / "hello.toml", text)
    gyoza(gyoza_server.url, "deploy", str(op_file))
    result = gyoza(gyoza_server.url, "deploy", str(op_file))
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("updated")
    assert "event_delivery.secret" in result.stdout


def test_deploy_dry_run_reports_changes_and_sends_nothing(gyoza_server, tmp_path):
    write(tmp_path / "ops" / "hello.toml", HELLO)
    write(tmp_path / "ops" / "nested" / "two.toml", TWO_OPS)
    gyoza(gyoza_server.url, "deploy", str(tmp_path / "ops" / "hello.toml"))
    write(tmp_path / "ops" / "hello.toml", HELLO.replace("says hello", "greets"))
    result = gyoza(gyoza_server.url, "deploy", "--dry-run", str(tmp_path / "ops"))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert [line.split()[:2] for line in lines] == [
        ["would", "update"], ["would", "create"], ["would", "create"]
    ]
    names = {d["name"]: d for d in gyoza_server.client().list_definitions()}
    assert set(names) == {"hello"}
    assert names["hello"]["description"] == "says hello"


def test_deploy_folder_finds_toml_and_json_recursively_and_several_ops_per_file(gyoza_server, tmp_path):
    write(tmp_path / "ops" / "a" / "two.toml", TWO_OPS)
    write(tmp_path / "ops" / "b" / "three.json",
          json.dumps({"name": "third", "version": "1", "image": "busybox:latest"}))
    write(tmp_path / "ops" / "pyproject.toml", "[project]\nname = 'not-an-op'\n")
    write(tmp_path / "ops" / ".hidden" / "skip.toml", "not toml at all [")
    result = gyoza(gyoza_server.url, "deploy", str(tmp_path / "ops"))
    assert result.exit_code == 0, result.output
    assert result.stdout.count("created") == 3
    stored = {(d["name"], d["version"]) for d in gyoza_server.client().list_definitions()}
    assert stored == {("first", "1"), ("second", "2.0"), ("third", "1")}


def test_deploy_invalid_field_names_file_op_and_field_and_sends_nothing(gyoza_server, tmp_path):
    write(tmp_path / "ops" / "good.toml", HELLO)
    bad = write(tmp_path / "ops" / "bad.toml",
                TWO_OPS.replace("constraints = { gpus = 1,", "constraints = { gpus = -1,"))
    result = gyoza(gyoza_server.url, "deploy", str(tmp_path / "ops"))
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    error = next(line for line in result.stderr.splitlines() if "second" in line)
    assert str(bad) in error
    assert "op 'second'" in error
    assert "constraints.gpus" in error
    assert "nothing was deployed" in result.stderr
    assert gyoza_server.client().list_definitions() == []


def test_deploy_unparseable_toml_names_the_file(gyoza_server, tmp_path):
    bad = write(tmp_path / "broken.toml", 'name = "x\n')
    result = gyoza(gyoza_server.url, "deploy", str(bad))
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert f"{bad}: not valid TOML" in result.stderr


def test_deploy_unquoted_version_explains_how_to_quote_it(gyoza_server, tmp_path):
    bad = write(tmp_path / "v.toml", 'name = "x"\nversion = 1.0\nimage = "busybox"\n')
    result = gyoza(gyoza_server.url, "deploy", str(bad))
    assert result.exit_code == 1
    assert 'version = "1.0"' in result.stderr


def test_deploy_invalid_input_schema_is_refused_locally(gyoza_server, tmp_path):
    bad = write(tmp_path / "s.toml",
                'name = "x"\nversion = "1"\nimage = "busybox"\n[input_schema]\ntype = 5\n')
    result = gyoza(gyoza_server.url, "deploy", str(bad))
    assert result.exit_code == 1
    assert "input_schema" in result.stderr and "JSON Schema" in result.stderr
    assert gyoza_server.client().list_definitions() == []


def test_deploy_duplicate_name_and_version_across_files_is_refused(gyoza_server, tmp_path):
    write(tmp_path / "ops" / "a.toml", HELLO)
    write(tmp_path / "ops" / "b.toml", HELLO)
    result = gyoza(gyoza_server.url, "deploy", str(tmp_path / "ops"))
    assert result.exit_code == 1
    assert "also defined in" in result.stderr
    assert gyoza_server.client().list_definitions() == []


def test_deploy_json_prints_one_result_per_op(gyoza_server, tmp_path):
    op_file = write(tmp_path / "two.toml", TWO_OPS)
    result = gyoza(gyoza_server.url, "deploy", "--json", str(op_file))
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [(r["name"], r["status"]) for r in rows] == [("first", "created"), ("second", "created")]


def test_deploy_missing_path_is_one_error_line(gyoza_server, tmp_path):
    result = gyoza(gyoza_server.url, "deploy", str(tmp_path / "nope"))
    assert result.exit_code == 1
    assert_one_error_line(result.output, "no such file or folder")


def test_deploy_dry_run_with_server_down_still_validates_and_warns(tmp_path):
    op_file = write(tmp_path / "hello.toml", HELLO)
    result = gyoza("http://127.0.0.1:9", "deploy", "--dry-run", str(op_file))
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("valid")
    assert "cannot reach the gyoza server at http://127.0.0.1:9" in result.stderr
    assert "Traceback" not in result.output


def test_deploy_dry_run_with_server_down_still_fails_on_invalid_definition(tmp_path):
    bad = write(tmp_path / "bad.toml", 'name = "Bad Name"\nversion = "1"\nimage = "busybox"\n')
    result = gyoza("http://127.0.0.1:9", "deploy", "--dry-run", str(bad))
    assert result.exit_code == 1
    assert "name:" in result.stderr


def test_deploy_with_server_down_is_one_error_line(tmp_path):
    op_file = write(tmp_path / "hello.toml", HELLO)
    result = gyoza("http://127.0.0.1:9", "deploy", str(op_file))
    assert result.exit_code == 1
    assert_one_error_line(result.output, "http://127.0.0.1:9", "gyoza up")
