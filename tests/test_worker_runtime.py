"""The container request the runtime builds: what each run is allowed (SPEC §1 Constraints, §5)."""

from __future__ import annotations

from pathlib import Path

from gyoza.runtime import ContainerSpec, DockerRuntime, registry_of, split_reference


def spec(**overrides) -> ContainerSpec:
    values = dict(run_id="r1", attempt=2, worker_id="w1", image="img:1", command=["python", "x.py"],
                  env={"A": "1"}, inputs={"n": 1})
    values.update(overrides)
    return ContainerSpec(**values)


def test_assigned_gpus_are_requested_by_uuid_from_the_nvidia_driver(tmp_path):
    config = DockerRuntime(tmp_path)._config(spec(gpu_uuids=["GPU-a", "GPU-b"]), Path("/w"))
    assert config["HostConfig"]["DeviceRequests"] == [
        {"Driver": "nvidia", "DeviceIDs": ["GPU-a", "GPU-b"], "Capabilities": [["gpu"]]}
    ]
    assert "CUDA_DEVICE_ORDER=PCI_BUS_ID" in config["Env"]


def test_zero_cpu_and_ram_mean_no_limit(tmp_path):
    host = DockerRuntime(tmp_path)._config(spec(cpu_cores=0, ram_mb=0), Path("/w"))["HostConfig"]
    assert "NanoCpus" not in host and "Memory" not in host


def test_command_none_keeps_the_image_cmd(tmp_path):
    assert "Cmd" not in DockerRuntime(tmp_path)._config(spec(command=None), Path("/w"))
    assert DockerRuntime(tmp_path)._config(spec(), Path("/w"))["Cmd"] == ["python", "x.py"]


def test_gyoza_variables_win_over_the_ops_env(tmp_path):
    config = DockerRuntime(tmp_path)._config(spec(env={"GYOZA_RUN_ID": "spoof", "A": "1"}), Path("/w"))
    assert "GYOZA_RUN_ID=r1" in config["Env"] and "GYOZA_RUN_ID=spoof" not in config["Env"]
    assert "A=1" in config["Env"]


def test_image_references_split_into_repository_tag_and_digest():
    assert split_reference("busybox") == ("busybox", None, None)
    assert split_reference("localhost:5000/a/b:2") == ("localhost:5000/a/b", "2", None)
    assert split_reference("ghcr.io/x/y@sha256:abc") == ("ghcr.io/x/y", None, "sha256:abc")
    assert registry_of("ghcr.io/x/y") == "ghcr.io" and registry_of("library/busybox") is None


def test_inputs_too_large_for_an_environment_variable_go_only_to_the_inputs_file(tmp_path):
    big = {"blob": "x" * 200_000}
    config = DockerRuntime(tmp_path)._config(spec(inputs=big), Path("/w"))
    assert not any(item.startswith("GYOZA_INPUTS=") for item in config["Env"])
    small = DockerRuntime(tmp_path)._config(spec(inputs={"n": 1}), Path("/w"))
    assert 'GYOZA_INPUTS={"n": 1}' in small["Env"]


def test_pulls_use_this_machines_docker_login(tmp_path, monkeypatch):
    import base64
    import json

    from gyoza.runtime import registry_auth

    token = base64.b64encode(b"me:s3cret").decode()
    (tmp_path / "config.json").write_text(json.dumps({"auths": {
        "ghcr.io": {"auth": token},
        "https://index.docker.io/v1/": {"auth": base64.b64encode(b"hub:pw").decode()},
    }}))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    assert registry_auth("ghcr.io/me/op:1") == {"username": "me", "password": "s3cret", "serveraddress": "ghcr.io"}
    assert registry_auth("me/op:1")["username"] == "hub"
    assert registry_auth("quay.io/x/y") is None
