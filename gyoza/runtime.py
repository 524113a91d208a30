"""The container runtime: the only module that knows Docker's API shape.

The worker speaks in terms of "start this op", "its output lines", "its
exit", "stop it"; this module turns those into Docker Engine API calls with
aiodocker. Every Docker call is asynchronous (aiohttp over the Docker
socket), so nothing here blocks the event loop; the few blocking bits
(credential helpers, folder removal) go through ``asyncio.to_thread``.

Isolation rules live here too, in one place: no privileged mode, no host
network, no Docker socket mount, ``no-new-privileges``, and resource limits
equal to the run's reservation.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiodocker
import aiohttp
from aiodocker.exceptions import DockerError

log = logging.getLogger("gyoza.worker")

__all__ = [
    "ContainerSpec",
    "ContainerInfo",
    "ExitStatus",
    "DockerRuntime",
    "RuntimeUnavailable",
    "ImagePullError",
    "ContainerError",
    "LogLine",
    "LABEL_RUN_ID",
    "LABEL_ATTEMPT",
    "LABEL_WORKER_ID",
    "MAX_ENV_INPUTS_BYTES",
    "docker_unreachable",
]

LABEL_RUN_ID = "gyoza.run_id"
LABEL_ATTEMPT = "gyoza.attempt"
LABEL_WORKER_ID = "gyoza.worker_id"
MOUNT_POINT = "/gyoza"
MIN_MEMORY_BYTES = 6 * 1024 * 1024  # Docker refuses limits below 6 MB
DOCKER_HUB = "https://index.docker.io/v1/"
# Linux refuses to exec with one environment string over 128 KiB; larger
# inputs are only in /gyoza/inputs.json (gyoza.op.inputs() reads either).
MAX_ENV_INPUTS_BYTES = 96 * 1024


class RuntimeUnavailable(Exception):
    """The Docker engine cannot be reached (not installed, not running, no permission)."""


class ImagePullError(Exception):
    """The image is absent and pulling it failed; the message is the registry's."""


class ContainerError(Exception):
    """Docker refused to create or start the container (bad command, bad limits...)."""


@dataclass(frozen=True)
class ContainerSpec:
    """Everything needed to start one attempt's container."""

    run_id: str
    attempt: int
    worker_id: str
    image: str
    command: list[str] | None
    env: dict[str, str]
    inputs: dict[str, Any]
    cpu_cores: float = 0.0
    ram_mb: int = 0
    gpu_uuids: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ContainerInfo:
    """One of this worker's containers, as found by its labels."""

    id: str
    run_id: str
    attempt: int
    running: bool
    started_at: float | None  # unix time, None when it never started
    workdir: str | None  # host folder mounted at /gyoza


@dataclass(frozen=True)
class ExitStatus:
    exit_code: int
    oom_killed: bool


@dataclass(frozen=True)
class LogLine:
    """One line of output; ``t`` is Docker's timestamp (unix seconds) of its first byte."""

    t: float | None
    text: str


def _parse_docker_time(value: str | None) -> float | None:
    """Docker's RFC 3339 nanosecond timestamps → unix seconds (None for the zero time)."""
    if not value or value.startswith("0001-"):
        return None
    text = value.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    # Python accepts at most 6 fractional digits.
    if "." in text:
        head, _, rest = text.partition(".")
        digits = "".join(ch for ch in rest if ch.isdigit())
        tz = rest[len(digits):]
        text = f"{head}.{digits[:6]}{tz}"
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def split_reference(image: str) -> tuple[str, str | None, str | None]:
    """``registry/name:tag@digest`` → (repository, tag, digest)."""
    digest = None
    if "@" in image:
        image, digest = image.split("@", 1)
    tag = None
    slash = image.rfind("/")
    colon = image.rfind(":")
    if colon > slash:
        image, tag = image[:colon], image[colon + 1:]
    return image, tag, digest


def registry_of(image: str) -> str | None:
    """The registry host of a reference, or None for Docker Hub."""
    first, sep, _ = image.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first
    return None


def _docker_config() -> dict[str, Any]:
    path = Path(os.environ.get("DOCKER_CONFIG", Path.home() / ".docker")) / "config.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def registry_auth(image: str) -> dict[str, Any] | None:
    """Credentials from this machine's ``docker login`` for the image's registry.

    Reads ``~/.docker/config.json`` like the docker CLI: a credential helper
    (``credHelpers`` / ``credsStore``) first, then inline ``auths``. Blocking
    (may run a helper program): call it in a thread.
    """
    config = _docker_config()
    host = registry_of(image)
    keys = [host] if host else [DOCKER_HUB, "index.docker.io", "docker.io", "registry-1.docker.io"]
    helper = None
    for key in keys:
        helper = (config.get("credHelpers") or {}).get(key)
        if helper:
            break
    helper = helper or config.get("credsStore")
    if helper:
        try:
            proc = subprocess.run(
                [f"docker-credential-{helper}", "get"],
                input=keys[0], capture_output=True, text=True, timeout=15, check=False,
            )
            if proc.returncode == 0:
                creds = json.loads(proc.stdout)
                user, secret = creds.get("Username", ""), creds.get("Secret", "")
                if user == "<token>":
                    return {"identitytoken": secret, "serveraddress": keys[0]}
                if user or secret:
                    return {"username": user, "password": secret, "serveraddress": keys[0]}
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            log.warning("docker credential helper %r failed: %s", helper, exc)
    auths = config.get("auths") or {}
    for key in keys:
        for candidate in (key, f"https://{key}", f"http://{key}"):
            entry = auths.get(candidate)
            if entry and entry.get("auth"):
                raw = base64.b64decode(entry["auth"]).decode("utf-8", "replace")
                user, _, password = raw.partition(":")
                return {"username": user, "password": password, "serveraddress": keys[0]}
            if entry and entry.get("identitytoken"):
                return {"identitytoken": entry["identitytoken"], "serveraddress": keys[0]}
    return None


# aiodocker's status for "could not talk to the engine at all" (refused, reset, gone).
DOCKER_CONNECTION_ERROR = 900


def docker_unreachable(exc: BaseException) -> bool:
    """True when ``exc`` means the engine itself is gone (stopped, restarting), not a refusal."""
    if isinstance(exc, DockerError):
        return exc.status == DOCKER_CONNECTION_ERROR
    return isinstance(exc, RuntimeUnavailable | aiohttp.ClientError | OSError)


def _message(exc: BaseException) -> str:
    if isinstance(exc, DockerError):
        return str(exc.message).strip()
    return str(exc).strip() or type(exc).__name__


class DockerRuntime:
    """Runs ops as Docker containers through the Engine API (aiodocker).

    ``workdir_root`` holds one fresh folder per attempt, mounted at
    ``/gyoza``; it must be a path the Docker engine can see (the same
    machine).
    """

    def __init__(self, workdir_root: str | os.PathLike[str], *, url: str | None = None) -> None:
        self.workdir_root = Path(workdir_root)
        self._url = url
        self._docker: aiodocker.Docker | None = None
        self._ncpu: int = os.cpu_count() or 1

    # -- connection -------------------------------------------------------------

    async def connect(self) -> None:
        """Reach the engine or raise RuntimeUnavailable saying why."""
        if self._docker is not None:
            # Keep the session when the engine is away: closing it under an in-flight
            # wait() hangs that call, and it opens new connections once the engine is back.
            await self.ping(fresh=True)
            return
        try:
            docker = aiodocker.Docker(url=self._url)
        except Exception as exc:  # no socket found: aiodocker asserts or raises ValueError
            raise RuntimeUnavailable(
                "no Docker engine found (no DOCKER_HOST and no /var/run/docker.sock)"
            ) from exc
        try:
            info = await docker.system.info()
        except Exception as exc:
            await docker.close()
            raise RuntimeUnavailable(f"Docker engine at {docker.docker_host} is not reachable: {_message(exc)}") from exc
        self._docker = docker
        self._ncpu = int(info.get("NCPU") or self._ncpu)
        self.workdir_root.mkdir(parents=True, exist_ok=True, mode=0o700)

    async def ping(self, *, fresh: bool = False) -> None:
        """Raise RuntimeUnavailable when the engine does not answer; never closes the session.

        ``fresh`` asks over a new connection: a stopping dockerd closes its
        listener first, then stops its containers while already open
        connections still answer, so only a new one tells that it is going away.
        """
        docker: aiodocker.Docker | None = None
        try:
            try:
                docker = aiodocker.Docker(url=self._url) if fresh else self.docker
            except (AssertionError, ValueError) as exc:  # aiodocker: no socket to connect to
                raise RuntimeUnavailable("Docker engine is not answering: its socket is gone") from exc
            await docker.version()
        except RuntimeUnavailable:
            raise
        except Exception as exc:
            raise RuntimeUnavailable(f"Docker engine is not answering: {_message(exc)}") from exc
        finally:
            if fresh and docker is not None:
                await docker.close()

    async def close(self) -> None:
        if self._docker is not None:
            docker, self._docker = self._docker, None
            try:
                await docker.close()
            except Exception:
                pass

    @property
    def docker(self) -> aiodocker.Docker:
        if self._docker is None:
            raise RuntimeUnavailable("not connected to Docker")
        return self._docker

    # -- images -------------------------------------------------------------------

    async def ensure_image(self, image: str, on_progress: Callable[[str], None] | None = None) -> bool:
        """Pull ``image`` if it is not present (policy if-not-present).

        Returns True when a pull happened. Progress lines (one per layer state
        change, not per downloaded chunk) go to ``on_progress``. A failed pull
        raises ImagePullError carrying Docker's/the registry's message.
        """
        try:
            await self.docker.images.inspect(image)
            return False
        except DockerError as exc:
            if docker_unreachable(exc):
                raise RuntimeUnavailable(_message(exc)) from exc
            if exc.status != 404:
                raise ImagePullError(f"cannot inspect image {image}: {_message(exc)}") from exc
        repo, tag, digest = split_reference(image)
        from_image = f"{repo}@{digest}" if digest else repo
        auth = await asyncio.to_thread(registry_auth, image)
        if auth and registry_of(image) is None:
            # aiodocker wants an explicit registry host when credentials are sent.
            from_image = f"docker.io/{from_image if '/' in repo else 'library/' + from_image}"
        if on_progress:
            on_progress(f"pulling image {image}")
        last_status: dict[str, str] = {}
        try:
            stream = self.docker.images.pull(
                from_image, tag=None if digest else (tag or "latest"), auth=auth, stream=True
            )
            async for item in stream:
                self._pull_item(item, last_status, on_progress)
        except ImagePullError:
            raise
        except Exception as exc:  # DockerError / DockerStreamError carry the registry's words
            raise ImagePullError(f"pulling {image} failed: {_message(exc)}") from exc
        return True

    @staticmethod
    def _pull_item(
        item: dict[str, Any], last_status: dict[str, str], on_progress: Callable[[str], None] | None
    ) -> None:
        if item.get("error"):
            detail = item.get("errorDetail", {}).get("message") or item["error"]
            raise ImagePullError(str(detail).strip())
        status = str(item.get("status", "")).strip()
        if not status or on_progress is None:
            return
        layer = str(item.get("id", ""))
        if last_status.get(layer) == status:  # Downloading/Extracting repeat per chunk
            return
        last_status[layer] = status
        on_progress(f"{layer}: {status}" if layer else status)

    # -- containers -----------------------------------------------------------------

    def _make_workdir(self, spec: ContainerSpec) -> Path:
        self.workdir_root.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = Path(tempfile.mkdtemp(prefix=f"{spec.run_id}-a{spec.attempt}-", dir=self.workdir_root))
        # The container's user may not be ours; the parent folder stays private.
        path.chmod(0o777)
        (path / "inputs.json").write_text(json.dumps(spec.inputs))
        (path / "inputs.json").chmod(0o644)
        return path

    def _config(self, spec: ContainerSpec, workdir: Path) -> dict[str, Any]:
        env = dict(spec.env)
        inputs_json = json.dumps(spec.inputs)
        env.pop("GYOZA_INPUTS", None)
        if len(inputs_json.encode()) <= MAX_ENV_INPUTS_BYTES:
            env["GYOZA_INPUTS"] = inputs_json
        env.update(
            {
                "GYOZA_RUN_ID": spec.run_id,
                "GYOZA_ATTEMPT": str(spec.attempt),
                "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
                "PYTHONUNBUFFERED": env.get("PYTHONUNBUFFERED", "1"),
            }
        )
        host: dict[str, Any] = {
            "Binds": [f"{workdir}:{MOUNT_POINT}"],
            "SecurityOpt": ["no-new-privileges"],
            "Privileged": False,
            "NetworkMode": "bridge",
            "AutoRemove": False,
            "RestartPolicy": {"Name": "no"},
            "LogConfig": {"Type": "json-file", "Config": {}},
        }
        if spec.cpu_cores > 0:
            cores = min(max(spec.cpu_cores, 0.01), float(self._ncpu))
            host["NanoCpus"] = int(cores * 1e9)
        if spec.ram_mb > 0:
            memory = max(spec.ram_mb * 1024 * 1024, MIN_MEMORY_BYTES)
            host["Memory"] = memory
            host["MemorySwap"] = memory  # no swap beyond the limit: OOM is OOM
        if spec.gpu_uuids:
            host["DeviceRequests"] = [
                {"Driver": "nvidia", "DeviceIDs": list(spec.gpu_uuids), "Capabilities": [["gpu"]]}
            ]
        config: dict[str, Any] = {
            "Image": spec.image,
            "Env": [f"{k}={v}" for k, v in env.items()],
            "Labels": {
                LABEL_RUN_ID: spec.run_id,
                LABEL_ATTEMPT: str(spec.attempt),
                LABEL_WORKER_ID: spec.worker_id,
            },
            "AttachStdout": False,
            "AttachStderr": False,
            "Tty": False,
            "OpenStdin": False,
            "HostConfig": host,
        }
        if spec.command is not None:
            config["Cmd"] = list(spec.command)
        return config

    async def start(self, spec: ContainerSpec) -> tuple[str, str]:
        """Create and start the container; returns (container id, host workdir).

        On failure nothing is left behind (container and folder removed).
        """
        workdir = await asyncio.to_thread(self._make_workdir, spec)
        container_id: str | None = None
        try:
            container = await self.docker.containers.create(self._config(spec, workdir))
            container_id = container.id
            await container.start()
        except DockerError as exc:
            if container_id:
                await self.remove(container_id)
            await self.remove_workdir(str(workdir))
            if docker_unreachable(exc):
                raise RuntimeUnavailable(_message(exc)) from exc
            raise ContainerError(_message(exc)) from exc
        except BaseException:
            if container_id:
                await self.remove(container_id)
            await self.remove_workdir(str(workdir))
            raise
        return container_id, str(workdir)

    async def lines(self, container_id: str) -> AsyncIterator[LogLine]:
        """The container's stdout and stderr, line by line, from its start until it exits.

        Docker's json-file driver stores output, so following from the start
        misses nothing, even when attaching late (a restarted worker).
        """
        container = self.docker.containers.container(container_id)
        stream = container.log(stdout=True, stderr=True, follow=True, timestamps=True)
        buffer = ""
        first_t: float | None = None
        async for frame in stream:
            stamp, _, text = frame.partition(" ")
            t = _parse_docker_time(stamp)
            if not buffer:
                first_t = t
            # Docker splits lines over 16 KiB into several frames without "\n".
            buffer += text
            while "\n" in buffer:
                line, buffer = buffer.split("\n", 1)
                yield LogLine(first_t, line.rstrip("\r"))
                first_t = t
        if buffer:
            yield LogLine(first_t, buffer.rstrip("\r"))

    async def wait(self, container_id: str) -> ExitStatus:
        """Wait for the container to exit; report its code and whether the kernel OOM-killed it."""
        container = self.docker.containers.container(container_id)
        result = await container.wait()
        code = int(result.get("StatusCode", -1))
        info = await container.show()
        state = info.get("State", {})
        return ExitStatus(exit_code=int(state.get("ExitCode", code)), oom_killed=bool(state.get("OOMKilled")))

    async def stop(self, container_id: str, grace_s: float = 2.0) -> None:
        """SIGTERM, ``grace_s`` seconds, then SIGKILL; a gone container is fine."""
        container = self.docker.containers.container(container_id)
        try:
            await container.kill(signal="SIGTERM")
        except DockerError as exc:
            if exc.status in (404, 409):  # gone, or not running
                return
            raise
        try:
            await asyncio.wait_for(container.wait(), timeout=grace_s)
            return
        except TimeoutError:
            pass
        except DockerError as exc:
            if exc.status == 404:
                return
        try:
            await container.kill(signal="SIGKILL")
        except DockerError as exc:
            if exc.status not in (404, 409):
                raise

    async def remove(self, container_id: str) -> None:
        """Force-remove the container; already gone is fine."""
        try:
            await self.docker.containers.container(container_id).delete(force=True)
        except DockerError as exc:
            if exc.status not in (404, 409):
                log.warning("could not remove container %s: %s", container_id[:12], _message(exc))

    async def remove_workdir(self, workdir: str | None) -> None:
        """Delete an attempt's host folder, but only one under our workdir root."""
        if not workdir:
            return
        path = Path(workdir)
        try:
            path.resolve().relative_to(self.workdir_root.resolve())
        except ValueError:
            log.warning("not removing %s: outside %s", path, self.workdir_root)
            return
        await asyncio.to_thread(shutil.rmtree, path, True)

    async def read_outputs(self, workdir: str | None) -> dict[str, Any] | None:
        """``/gyoza/outputs.json`` as written by the op; None when absent.

        Raises ValueError when the file exists but is not a JSON object.
        """
        if not workdir:
            return None
        path = Path(workdir) / "outputs.json"

        def read() -> str | None:
            try:
                return path.read_text(encoding="utf-8")
            except FileNotFoundError:
                return None

        text = await asyncio.to_thread(read)
        if text is None:
            return None
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("outputs.json must hold a JSON object")
        return data

    async def list_containers(self, worker_id: str) -> list[ContainerInfo]:
        """Every container (running or not) labelled with this worker's id."""
        found = await self.docker.containers.list(
            all=True, filters=json.dumps({"label": [f"{LABEL_WORKER_ID}={worker_id}"]})
        )
        result: list[ContainerInfo] = []
        for item in found:
            try:
                info = await item.show()
            except DockerError:
                continue
            labels = info.get("Config", {}).get("Labels") or {}
            workdir = None
            for mount in info.get("Mounts") or []:
                if mount.get("Destination") == MOUNT_POINT:
                    workdir = mount.get("Source")
            try:
                attempt = int(labels.get(LABEL_ATTEMPT, "0"))
            except ValueError:
                attempt = 0
            state = info.get("State", {})
            result.append(
                ContainerInfo(
                    id=info["Id"],
                    run_id=labels.get(LABEL_RUN_ID, ""),
                    attempt=attempt,
                    running=bool(state.get("Running")),
                    started_at=_parse_docker_time(state.get("StartedAt")),
                    workdir=workdir,
                )
            )
        return result
