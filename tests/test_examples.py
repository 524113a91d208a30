"""The examples/ ops: their definitions deploy, their code speaks the protocol."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli_fakes import FakeWorker, complete, fail, gyoza
from tests.docker_fixtures import (  # noqa: F401  (fixtures are found by name)
    busybox_image_fixture,
    docker_engine_fixture,
    remove_containers,
)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
OPS = ["countdown", "gpu-info", "wordcount"]


def protocol_lines(stdout: str) -> list[dict]:
    return [json.loads(line[len("GYOZA:"):]) for line in stdout.splitlines()
            if line.startswith("GYOZA:")]


def run_example(script: Path, inputs: dict, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GYOZA_INPUTS": json.dumps(inputs), "PYTHONPATH": str(ROOT)}
    return subprocess.run([*argv, str(script)], capture_output=True, text=True, env=env,
                          timeout=60)


def test_every_example_op_has_a_definition_a_dockerfile_and_a_readme_paragraph():
    readme = (EXAMPLES / "README.md").read_text()
    for op in OPS:
        assert (EXAMPLES / op / "op.toml").is_file()
        assert (EXAMPLES / op / "Dockerfile").is_file()
        assert f"## {op}" in readme
    assert "## pipeline" in readme


def test_example_definitions_pass_deploy_dry_run(gyoza_server):
    result = gyoza(gyoza_server.url, "deploy", "--dry-run", str(EXAMPLES))
    assert result.exit_code == 0, result.output
    assert [line.split()[:3] for line in result.stdout.splitlines()] == [
        ["would", "create", op] for op in OPS
    ]
    assert gyoza_server.client().list_definitions() == []


def test_example_definitions_deploy_and_accept_their_documented_inputs(gyoza_server):
    assert gyoza(gyoza_server.url, "deploy", str(EXAMPLES)).exit_code == 0
    client = gyoza_server.client()
    run = client.create_run_from_definition("wordcount", {"text": "to be or not to be"})
    assert run["inputs"] == {"text": "to be or not to be", "top": 5, "lowercase": True}
    assert client.create_run_from_definition("countdown", {})["inputs"] == {
        "seconds": 10, "fail": False}
    gpu_run = client.create_run_from_definition("gpu-info", {})
    assert gpu_run["constraints"]["gpus"] == 1


def test_wordcount_reports_progress_logs_and_outputs_through_gyoza_op():
    proc = run_example(EXAMPLES / "wordcount" / "main.py",
                       {"text": "to be or not to be\nthat is", "top": 2}, sys.executable)
    assert proc.returncode == 0, proc.stderr
    messages = protocol_lines(proc.stdout)
    assert [m["msg"] for m in messages if m["type"] == "PROGRESS"] == [50, 100]
    assert messages[-1] == {"type": "OUTPUTS",
                            "outputs": {"words": 8, "unique": 6, "top": [["to", 2], ["be", 2]]}}
    assert "counted 8 words in 2 line(s)" in proc.stdout


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX sh")
def test_countdown_speaks_the_protocol_in_plain_shell():
    proc = run_example(EXAMPLES / "countdown" / "countdown.sh", {"seconds": 1, "fail": False},
                       "sh")
    assert proc.returncode == 0, proc.stderr
    assert protocol_lines(proc.stdout) == [
        {"type": "PROGRESS", "msg": 0},
        {"type": "PROGRESS", "msg": 100},
        {"type": "OUTPUTS", "outputs": {"counted": 1}},
    ]


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX sh")
def test_countdown_fails_on_request():
    proc = run_example(EXAMPLES / "countdown" / "countdown.sh", {"seconds": 0, "fail": True},
                       "sh")
    assert proc.returncode == 1
    assert "liftoff aborted" in proc.stderr


def _nvml_works() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
        return True
    except Exception:
        return False


@pytest.mark.skipif(_nvml_works(), reason="this machine has a working NVML")
def test_gpu_info_without_nvml_exits_2_with_one_clear_line():
    proc = run_example(EXAMPLES / "gpu-info" / "main.py", {}, sys.executable)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("NVML unavailable")
    assert proc.stderr.count("\n") == 1


@pytest.mark.skipif(not _nvml_works(), reason="needs an NVIDIA driver (NVML)")
def test_gpu_info_reports_every_visible_gpu():
    proc = run_example(EXAMPLES / "gpu-info" / "main.py", {}, sys.executable)
    assert proc.returncode == 0, proc.stderr
    outputs = protocol_lines(proc.stdout)[-1]["outputs"]
    assert outputs["gpus"] and all(g["memory_total_mb"] > 0 for g in outputs["gpus"])
    assert outputs["gpus"][0]["uuid"].startswith("GPU-")


class _FakeNvml:
    """Stands in for the NVML C library (not for anything of ours)."""

    class NVMLError(Exception):
        pass

    NVML_TEMPERATURE_GPU = 0

    def __init__(self, free_mb: int) -> None:
        self.free = free_mb * 1024 * 1024

    def nvmlInit(self): ...
    def nvmlShutdown(self): ...
    def nvmlSystemGetDriverVersion(self): return "550.54.15"
    def nvmlSystemGetCudaDriverVersion(self): return 12040
    def nvmlDeviceGetCount(self): return 1
    def nvmlDeviceGetHandleByIndex(self, i): return i
    def nvmlDeviceGetName(self, h): return b"NVIDIA H200"
    def nvmlDeviceGetUUID(self, h): return "GPU-0f0e0d0c-aaaa-bbbb-cccc-0123456789ab"
    def nvmlDeviceGetPciInfo(self, h): return type("Pci", (), {"busId": "00000000:19:00.0"})
    def nvmlDeviceGetTemperature(self, h, kind): return 41
    def nvmlDeviceGetPowerUsage(self, h): return 123_456
    def nvmlDeviceGetEnforcedPowerLimit(self, h): return 700_000
    def nvmlDeviceGetCudaComputeCapability(self, h): return (9, 0)

    def nvmlDeviceGetUtilizationRates(self, h):
        raise self.NVMLError("not supported")

    def nvmlDeviceGetMemoryInfo(self, h):
        total = 143_771 * 1024 * 1024
        return type("Mem", (), {"total": total, "free": self.free, "used": total - self.free})


def _load_gpu_info(monkeypatch, free_mb: int):
    monkeypatch.setitem(sys.modules, "pynvml", _FakeNvml(free_mb))
    spec = importlib.util.spec_from_file_location("gpu_info_example",
                                                  EXAMPLES / "gpu-info" / "main.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_info_turns_nvml_answers_into_outputs_and_an_smi_table(monkeypatch, capsys):
    module = _load_gpu_info(monkeypatch, free_mb=100_000)
    monkeypatch.setenv("GYOZA_INPUTS", json.dumps({"min_free_mb": 1000}))
    assert module.main() == 0
    out = capsys.readouterr().out
    outputs = protocol_lines(out)[-1]["outputs"]
    assert outputs["driver_version"] == "550.54.15"
    assert outputs["cuda_driver_version"] == "12.4"
    gpu = outputs["gpus"][0]
    assert (gpu["name"], gpu["memory_total_mb"], gpu["memory_free_mb"]) == ("NVIDIA H200", 143_771, 100_000)
    assert (gpu["power_w"], gpu["power_limit_w"], gpu["compute_capability"]) == (123.5, 700.0, "9.0")
    assert gpu["utilization_pct"] is None  # an unsupported query is None, not a crash
    assert "NVIDIA H200" in out and "43771 / 143771 MiB" in out


def test_gpu_info_fails_when_free_memory_is_below_min_free_mb(monkeypatch, capsys):
    module = _load_gpu_info(monkeypatch, free_mb=500)
    monkeypatch.setenv("GYOZA_INPUTS", json.dumps({"min_free_mb": 1000}))
    assert module.main() == 3
    assert "less than min_free_mb=1000" in capsys.readouterr().err


def _pipeline(url: str, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GYOZA_")}
    return subprocess.run(
        [sys.executable, str(EXAMPLES / "pipeline" / "pipeline.py"), "--server", url, *argv],
        capture_output=True, text=True, timeout=120, env=env,
    )


def test_pipeline_deploys_runs_and_passes_the_gate_on_expected_outputs(gyoza_server):
    with FakeWorker(gyoza_server.url, script=complete({"words": 6, "unique": 4})):
        proc = _pipeline(gyoza_server.url, "--deploy", str(EXAMPLES), "--op", "wordcount",
                         "-i", "text=to be or not to be", "--expect", "words=6",
                         "--expect", "unique=4")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "deployed wordcount 1" in proc.stdout
    assert "gate passed" in proc.stdout
    names = {d["name"] for d in gyoza_server.client().list_definitions()}
    assert names == set(OPS)


def test_pipeline_gate_fails_on_an_unexpected_output(gyoza_server):
    with FakeWorker(gyoza_server.url, script=complete({"words": 5})):
        proc = _pipeline(gyoza_server.url, "--deploy", str(EXAMPLES / "wordcount"),
                         "--op", "wordcount", "-i", "text=x", "--expect", "words=6")
    assert proc.returncode == 1
    assert "output 'words' is 5, expected 6" in proc.stderr


def test_pipeline_gate_fails_when_the_run_fails(gyoza_server):
    with FakeWorker(gyoza_server.url, script=fail("exit code 2: bad input")):
        proc = _pipeline(gyoza_server.url, "--deploy", str(EXAMPLES / "wordcount"),
                         "--op", "wordcount", "-i", "text=x")
    assert proc.returncode == 1
    assert "gate FAILED" in proc.stderr and "ended" in proc.stderr


@pytest.mark.docker
@pytest.mark.slow
def test_countdown_image_runs_end_to_end_under_a_real_worker_with_gyoza_run_follow(
        gyoza_server, busybox_image, tmp_path):
    """The user path: build the example, deploy it, `gyoza run --follow` it on a real worker."""
    image = "gyoza-examples/countdown:1"
    built = subprocess.run(["docker", "build", "-q", "--build-arg", f"BASE={busybox_image}",
                            "-t", image, str(EXAMPLES / "countdown")],
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    worker_id = f"examples-{os.getpid()}"
    log = open(tmp_path / "worker.log", "wb")
    worker = subprocess.Popen(
        [sys.executable, "-m", "gyoza.cli", "worker", "--server", gyoza_server.url,
         "--worker-id", worker_id, "--cpu-cores", "2", "--ram-mb", "2048", "--claim-wait", "2",
         "--state-dir", str(tmp_path / "state")],
        stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        assert gyoza(gyoza_server.url, "deploy", str(EXAMPLES / "countdown")).exit_code == 0
        result = gyoza(gyoza_server.url, "run", "countdown", "-i", "seconds=2", "--follow")
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(60)
        log.close()
        remove_containers(f"gyoza.worker_id={worker_id}")
    assert result.exit_code == 0, result.output + (tmp_path / "worker.log").read_text()
    out = result.stdout
    for needle in ("STARTED", "counting down from 2", "2...", "1...", " 50%", "100%",
                   "liftoff", '"counted": 2', "COMPLETED"):
        assert needle in out, (needle, out)
    assert "GYOZA:" not in out  # protocol lines became events, not log lines
