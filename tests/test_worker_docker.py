"""SPEC §5 end to end: a real server, a real worker, real containers.

Each test submits runs through the HTTP API and watches what a user would
see: the run's state, events, outputs and errors, and which containers exist.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from gyoza.client import AsyncGyozaClient
from gyoza.testing import GyozaTestServer

from .docker_fixtures import (  # noqa: F401  (fixtures are found by name)
    busybox_image_fixture,
    containers_of,
    docker_engine_fixture,
    log_lines,
    running_worker,
    sh,
    wait_for_run,
    worker_options,
)

pytestmark = pytest.mark.docker


@pytest.fixture
def gserver(tmp_path) -> Iterator[GyozaTestServer]:
    with GyozaTestServer(db=str(tmp_path / "gyoza.db"), heartbeat_interval=0.5, worker_timeout=5.0) as s:
        yield s


@pytest.fixture
async def api(gserver: GyozaTestServer) -> AsyncIterator[AsyncGyozaClient]:
    async with gserver.async_client() as c:
        yield c


async def test_op_printing_lines_progress_and_outputs_completes_with_its_events_and_outputs(
    gserver, api, busybox_image, tmp_path
):
    script = (
        'echo "hello from $GYOZA_RUN_ID attempt $GYOZA_ATTEMPT"; '
        "cat /gyoza/inputs.json; echo; "
        'echo "env inputs $GYOZA_INPUTS"; '
        'echo "GYOZA:{\\"type\\":\\"PROGRESS\\",\\"msg\\":50}"; '
        "echo to-stderr >&2; "
        'echo "GYOZA:{\\"type\\":\\"OUTPUTS\\",\\"outputs\\":{\\"a\\":1,\\"b\\":1}}"; '
        "i=0; while [ $i -lt 250 ]; do echo line-$i; i=$((i+1)); done; "
        'echo "GYOZA:{\\"type\\":\\"PROGRESS\\",\\"msg\\":100}"; '
        'echo "{\\"b\\":2,\\"c\\":\\"$GREETING\\"}" > /gyoza/outputs.json'
    )
    run = await api.create_run(
        busybox_image, {"n": 7}, command=sh(script), env={"GREETING": "hi"}
    )
    async with running_worker(worker_options(gserver.url, tmp_path)):
        done = await wait_for_run(api, run["id"])

    assert done["state"] == "COMPLETED", done["error"]
    assert done["outputs"] == {"a": 1, "b": 2, "c": "hi"}  # outputs.json wins on a clash
    types = [e["type"] for e in done["events"]]
    assert types[:3] == ["QUEUED", "ASSIGNED", "STARTED"] and types[-1] == "COMPLETED"
    assert [e["msg"] for e in done["events"] if e["type"] == "PROGRESS"] == [50, 100]
    lines = log_lines(done)
    assert f"hello from {run['id']} attempt 1" in lines
    assert '{"n": 7}' in lines and 'env inputs {"n": 7}' in lines
    assert "to-stderr" in lines
    assert [line for line in lines if line.startswith("line-")] == [f"line-{i}" for i in range(250)]
    assert not any(line.startswith("GYOZA:") for line in lines)
    # Batched: far fewer LOG events than lines.
    assert types.count("LOG") <= 10
    # PROGRESS 50 comes after the lines printed before it and before those after it.
    ids = {e["type"] + str(e["msg"])[:7]: e["id"] for e in done["events"]}
    first_log_with_lines = next(e["id"] for e in done["events"] if e["type"] == "LOG" and "line-0" in e["msg"])
    assert ids["PROGRESS50"] < first_log_with_lines
    worker_events = [e for e in done["events"] if e["type"] not in ("QUEUED", "ASSIGNED")]
    assert all(e["attempt"] == 1 and e["seq"] is not None for e in worker_events)
    seqs = [e["seq"] for e in worker_events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


async def test_non_zero_exit_fails_with_the_exit_code_and_last_lines(gserver, api, busybox_image, tmp_path):
    run = await api.create_run(
        busybox_image, {}, command=sh("for i in $(seq 1 30); do echo out-$i; done; exit 3")
    )
    async with running_worker(worker_options(gserver.url, tmp_path)):
        done = await wait_for_run(api, run["id"])

    assert done["state"] == "FAILED"
    assert done["error"].startswith("exit code 3: ")
    tail = done["error"].split("\n")[1:]
    assert tail == [f"out-{i}" for i in range(11, 31)]  # the last 20 lines
    failed = done["events"][-1]
    assert failed["type"] == "FAILED"
    assert failed["payload"]["exit_code"] == 3 and failed["payload"]["reason"] == "FAILED"
    assert done["attempts"][-1]["exit_code"] == 3


async def test_op_exceeding_its_memory_limit_fails_with_out_of_memory(gserver, api, busybox_image, tmp_path):
    run = await api.create_run(
        busybox_image, {},
        constraints={"cpu_cores": 1, "ram_mb": 16},
        command=sh("echo allocating; head -c 300m /dev/zero | tail"),
    )
    async with running_worker(worker_options(gserver.url, tmp_path)):
        done = await wait_for_run(api, run["id"])

    assert done["state"] == "FAILED"
    assert done["error"].split("\n")[0] == "exit code 137: out of memory"
    assert done["attempts"][-1]["exit_code"] == 137


async def test_timeout_kills_the_container_and_fails_with_reason_timeout(gserver, api, busybox_image, tmp_path):
    run = await api.create_run(
        busybox_image, {}, timeout_s=1.0, command=sh("echo started; sleep 60")
    )
    options = worker_options(gserver.url, tmp_path)
    async with running_worker(options):
        started = time.monotonic()
        done = await wait_for_run(api, run["id"], timeout=20)
        elapsed = time.monotonic() - started

    assert done["state"] == "FAILED"
    assert done["attempts"][-1]["reason"] == "TIMEOUT"
    assert done["events"][-1]["payload"]["reason"] == "TIMEOUT"
    assert "timed out after 1 s" in done["error"]
    assert elapsed < 10
    assert containers_of(f"gyoza.run_id={run['id']}") == []


async def test_cancel_while_running_removes_the_container_within_seconds(gserver, api, busybox_image, tmp_path):
    run = await api.create_run(busybox_image, {}, command=sh("echo working; sleep 60"))
    async with running_worker(worker_options(gserver.url, tmp_path)):
        await wait_for_run(api, run["id"], until=lambda r: r["state"] == "RUNNING")
        assert containers_of(f"gyoza.run_id={run['id']}") != []
        await api.cancel_run(run["id"])
        cancelled_at = time.monotonic()
        while containers_of(f"gyoza.run_id={run['id']}"):
            assert time.monotonic() - cancelled_at < 5, "container still there 5 s after cancel"
            await asyncio.sleep(0.1)
        gone_after = time.monotonic() - cancelled_at

    final = await api.get_run(run["id"])
    assert final["state"] == "CANCELLED"
    assert gone_after < 4


async def test_missing_image_fails_with_the_pull_error(gserver, api, docker_engine, tmp_path):
    image = "localhost:1/gyoza-test/does-not-exist:1"
    run = await api.create_run(image, {}, command=["true"])
    async with running_worker(worker_options(gserver.url, tmp_path)):
        done = await wait_for_run(api, run["id"], timeout=60)

    assert done["state"] == "FAILED"
    first_line = done["error"].split("\n")[0]
    assert first_line.startswith(f"image pull failed: pulling {image} failed: ")
    # Docker's own words follow (here: nothing listens on localhost:1).
    assert len(first_line) > len(f"image pull failed: pulling {image} failed: ") + 5
    assert "exit_code" not in done["events"][-1]["payload"]


async def test_twenty_concurrent_short_runs_all_complete(gserver, api, busybox_image, tmp_path):
    runs = [
        await api.create_run(
            busybox_image, {"i": i}, constraints={"cpu_cores": 0.1, "ram_mb": 32},
            command=sh('echo "GYOZA:{\\"type\\":\\"OUTPUTS\\",\\"outputs\\":$GYOZA_INPUTS}"; sleep 1'),
        )
        for i in range(20)
    ]
    options = worker_options(gserver.url, tmp_path)
    async with running_worker(options):
        started = time.monotonic()
        results = await asyncio.gather(*(wait_for_run(api, r["id"], timeout=90) for r in runs))
        elapsed = time.monotonic() - started

    assert [r["state"] for r in results] == ["COMPLETED"] * 20
    assert [r["outputs"] for r in results] == [{"i": i} for i in range(20)]
    assert elapsed < 60
    assert containers_of(f"gyoza.worker_id={options.worker_id}") == []


async def test_server_down_for_ten_seconds_mid_run_still_completes_with_every_event_in_order(
    busybox_image, tmp_path
):
    script = (
        "i=0; while [ $i -lt 30 ]; do echo tick-$i; "
        'echo "GYOZA:{\\"type\\":\\"PROGRESS\\",\\"msg\\":$((i*3))}"; sleep 0.5; i=$((i+1)); done'
    )
    with GyozaTestServer(
        db=str(tmp_path / "gyoza.db"), heartbeat_interval=0.5, worker_timeout=30.0
    ) as gserver:
        async with gserver.async_client() as api:
            run = await api.create_run(busybox_image, {}, command=sh(script))
            async with running_worker(worker_options(gserver.url, tmp_path)):
                await wait_for_run(api, run["id"], until=lambda r: "tick-1" in log_lines(r))
                await asyncio.to_thread(gserver.stop)
                await asyncio.sleep(10)
                await asyncio.to_thread(gserver.start)
                done = await wait_for_run(api, run["id"], timeout=60)

    assert done["state"] == "COMPLETED", done["error"]
    assert [line for line in log_lines(done) if line.startswith("tick-")] == [f"tick-{i}" for i in range(30)]
    assert [e["msg"] for e in done["events"] if e["type"] == "PROGRESS"] == [i * 3 for i in range(30)]
    seqs = [e["seq"] for e in done["events"] if e["seq"] is not None]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


async def test_container_gets_its_limits_labels_inputs_folder_and_no_extra_privileges(
    gserver, api, busybox_image, tmp_path
):
    run = await api.create_run(
        busybox_image, {"k": "v"}, constraints={"cpu_cores": 0.5, "ram_mb": 64},
        command=sh("echo ready; sleep 30"),
    )
    options = worker_options(gserver.url, tmp_path)
    async with running_worker(options):
        await wait_for_run(api, run["id"], until=lambda r: "ready" in log_lines(r))
        [container_id] = containers_of(f"gyoza.run_id={run['id']}")
        out = subprocess.run(["docker", "inspect", container_id], capture_output=True, text=True, check=True)
        info = json.loads(out.stdout)[0]
        await api.cancel_run(run["id"])

    host = info["HostConfig"]
    assert host["NanoCpus"] == 500_000_000
    assert host["Memory"] == 64 * 1024 * 1024
    assert host["SecurityOpt"] == ["no-new-privileges"]
    assert host["Privileged"] is False and host["NetworkMode"] == "bridge"
    assert not host.get("DeviceRequests")  # no GPUs asked, none given
    assert info["Config"]["Labels"] == {
        "gyoza.run_id": run["id"], "gyoza.attempt": "1", "gyoza.worker_id": options.worker_id,
    }
    env = dict(item.split("=", 1) for item in info["Config"]["Env"])
    assert env["GYOZA_RUN_ID"] == run["id"] and env["GYOZA_ATTEMPT"] == "1"
    assert json.loads(env["GYOZA_INPUTS"]) == {"k": "v"}
    assert env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    mounts = {m["Destination"]: m for m in info["Mounts"]}
    assert list(mounts) == ["/gyoza"]  # and never the Docker socket
    assert not Path(mounts["/gyoza"]["Source"]).exists()  # removed after the attempt


@pytest.fixture
def local_registry(docker_engine, tmp_path) -> Iterator[str]:
    """A throwaway registry on loopback (Debian package docker-registry); yields host:port."""
    binary = shutil.which("docker-registry") or shutil.which("registry")
    if binary is None:
        pytest.skip("no registry binary (apt-get install docker-registry)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = tmp_path / "registry.yml"
    config.write_text(
        "version: 0.1\n"
        f"storage:\n  filesystem:\n    rootdirectory: {tmp_path / 'registry'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    proc = subprocess.Popen([binary, "serve", str(config)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/v2/", timeout=1)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "registry did not start"
                time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


async def test_absent_image_is_pulled_with_progress_in_the_log(gserver, api, busybox_image, local_registry, tmp_path):
    image = f"{local_registry}/gyoza-test/pulled:{uuid.uuid4().hex[:8]}"
    for args in (["tag", busybox_image, image], ["push", image], ["rmi", image]):
        done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
    run = await api.create_run(image, {}, command=sh("echo pulled and ran"))
    try:
        async with running_worker(worker_options(gserver.url, tmp_path)):
            done = await wait_for_run(api, run["id"], timeout=60)
    finally:
        subprocess.run(["docker", "rmi", "-f", image], capture_output=True)

    assert done["state"] == "COMPLETED", done["error"]
    lines = log_lines(done)
    pull_lines = [line for line in lines if line.startswith("[pull] ")]
    assert pull_lines[0] == f"[pull] pulling image {image}"
    assert any("Downloaded newer image" in line or "Digest:" in line for line in pull_lines)
    assert lines.index("pulled and ran") > lines.index(pull_lines[-1])
