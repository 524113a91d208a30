"""What this machine offers to runs: CPU, RAM and GPUs, in the heartbeat's shape.

The scheduler on the server trusts these numbers blindly, so they must be
honest (psutil for CPU and RAM, NVML for GPUs) and detection must never take
the worker down: a machine without the NVIDIA library, driver or GPUs simply
reports no GPUs, with one log line saying why.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

import psutil

log = logging.getLogger("gyoza.worker")

__all__ = ["parse_gpu_tags", "detect_gpus", "detect_resources"]


def parse_gpu_tags(spec: str | None) -> dict[int, list[str]]:
    """Parse ``--gpu-tags 0=rtx,1=a100+fast`` into ``{0: ["rtx"], 1: ["a100", "fast"]}``.

    Tags of one GPU are joined by ``+`` because ``,`` already separates GPUs.
    A malformed entry raises ValueError naming it, so the CLI can print it.
    """
    result: dict[int, list[str]] = {}
    if not spec:
        return result
    for entry in spec.split(","):
        entry = entry.strip()
        if not entry:
            continue
        index, sep, tags = entry.partition("=")
        if not sep or not index.strip().isdigit():
            raise ValueError(f"bad --gpu-tags entry {entry!r}: expected INDEX=tag[+tag...], e.g. 0=rtx")
        names = [t.strip() for t in tags.split("+") if t.strip()]
        if not names:
            raise ValueError(f"bad --gpu-tags entry {entry!r}: no tag after '='")
        result.setdefault(int(index), []).extend(names)
    return result


def _text(value: Any) -> str:
    """NVML returns bytes in old nvidia-ml-py releases and str in new ones."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def detect_gpus(gpu_tags: dict[int, list[str]] | None = None) -> list[dict[str, Any]]:
    """GPUs as NVML sees them: ``[{id, vram_mb, tags, name, uuid}]``; ``[]`` when none.

    This is blocking (NVML talks to the driver); call it off the event loop.
    ``pynvml`` is imported here, not at module import, so a missing library is
    an ordinary "no GPU" machine rather than an ImportError at startup.
    """
    gpu_tags = gpu_tags or {}
    try:
        pynvml = importlib.import_module("pynvml")
    except ImportError:
        log.info("no GPUs: the NVIDIA management library (nvidia-ml-py) is not installed")
        return []
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
        log.info("no GPUs: NVML could not start (%s); is the NVIDIA driver installed?", exc)
        return []
    gpus: list[dict[str, Any]] = []
    try:
        count = int(pynvml.nvmlDeviceGetCount())
        for index in range(count):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            gpus.append(
                {
                    "id": index,
                    "vram_mb": int(memory.total) // (1024 * 1024),
                    "tags": list(gpu_tags.get(index, [])),
                    "name": _text(pynvml.nvmlDeviceGetName(handle)),
                    "uuid": _text(pynvml.nvmlDeviceGetUUID(handle)),
                }
            )
    except Exception as exc:
        log.warning("no GPUs: NVML failed while listing devices (%s)", exc)
        return []
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass
    if not gpus:
        log.info("no GPUs: NVML found no NVIDIA device on this machine")
    else:
        unknown = sorted(set(gpu_tags) - {g["id"] for g in gpus})
        if unknown:
            log.warning("--gpu-tags names GPU index(es) %s that this machine does not have", unknown)
        log.info(
            "GPUs: %s",
            ", ".join(f"{g['id']}={g['name']} ({g['vram_mb']} MB)" for g in gpus),
        )
    return gpus


def detect_resources(
    *,
    cpu_cores: float | None = None,
    ram_mb: int | None = None,
    gpu_tags: dict[int, list[str]] | None = None,
    gpus: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The heartbeat's ``resources``: ``{cpu_cores, ram_mb, gpus}``.

    ``cpu_cores`` and ``ram_mb`` override detection (to lend only part of a
    machine, or to make tests deterministic); ``gpus`` skips NVML entirely.
    """
    if cpu_cores is None:
        cpu_cores = float(psutil.cpu_count(logical=True) or 1)
    if ram_mb is None:
        ram_mb = int(psutil.virtual_memory().total // (1024 * 1024))
    if gpus is None:
        gpus = detect_gpus(gpu_tags)
    return {"cpu_cores": float(cpu_cores), "ram_mb": int(ram_mb), "gpus": gpus}
