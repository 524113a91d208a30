"""Resource detection (SPEC §5): CPU and RAM from psutil, GPUs from NVML.

NVML is replaced at the import boundary: ``sys.modules["pynvml"]`` is a
small fake exposing the same functions, or ``None`` (no library at all).
"""

from __future__ import annotations

import logging
import sys
import types

import psutil
import pytest

from gyoza.resources import detect_gpus, detect_resources, parse_gpu_tags


class _Memory:
    def __init__(self, total: int) -> None:
        self.total = total
        self.free = total
        self.used = 0


def fake_nvml(devices: list[tuple[object, object, int]], *, init_error: Exception | None = None):
    """A module with pynvml's functions over ``devices`` = [(name, uuid, total bytes)]."""
    module = types.ModuleType("pynvml")
    state = {"initialised": False, "shutdowns": 0}

    def nvmlInit() -> None:
        if init_error is not None:
            raise init_error
        state["initialised"] = True

    def nvmlShutdown() -> None:
        state["shutdowns"] += 1

    def nvmlDeviceGetCount() -> int:
        assert state["initialised"]
        return len(devices)

    def nvmlDeviceGetHandleByIndex(index: int) -> int:
        return index

    module.nvmlInit = nvmlInit
    module.nvmlShutdown = nvmlShutdown
    module.nvmlDeviceGetCount = nvmlDeviceGetCount
    module.nvmlDeviceGetHandleByIndex = nvmlDeviceGetHandleByIndex
    module.nvmlDeviceGetName = lambda h: devices[h][0]
    module.nvmlDeviceGetUUID = lambda h: devices[h][1]
    module.nvmlDeviceGetMemoryInfo = lambda h: _Memory(devices[h][2])
    module.state = state
    return module


GIB = 1024**3


def test_gpus_are_listed_with_index_name_uuid_and_total_vram(monkeypatch):
    nvml = fake_nvml([
        ("NVIDIA GeForce RTX 4090", "GPU-aaaa", 24 * GIB),
        (b"NVIDIA A100-SXM4-80GB", b"GPU-bbbb", 80 * GIB),  # old bindings return bytes
    ])
    monkeypatch.setitem(sys.modules, "pynvml", nvml)

    gpus = detect_gpus({0: ["rtx"], 1: ["a100", "fast"]})

    assert gpus == [
        {"id": 0, "vram_mb": 24576, "tags": ["rtx"], "name": "NVIDIA GeForce RTX 4090", "uuid": "GPU-aaaa"},
        {"id": 1, "vram_mb": 81920, "tags": ["a100", "fast"], "name": "NVIDIA A100-SXM4-80GB", "uuid": "GPU-bbbb"},
    ]
    assert nvml.state["shutdowns"] == 1


def test_no_nvml_library_means_no_gpus_and_one_log_line(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import raises ImportError
    with caplog.at_level(logging.INFO, logger="gyoza.worker"):
        assert detect_gpus() == []
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and "no GPUs" in messages[0] and "not installed" in messages[0]


def test_no_driver_means_no_gpus_and_one_log_line(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml([], init_error=RuntimeError("Driver Not Loaded")))
    with caplog.at_level(logging.INFO, logger="gyoza.worker"):
        assert detect_gpus() == []
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and "Driver Not Loaded" in messages[0]


def test_driver_without_gpus_means_no_gpus_and_one_log_line(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml([]))
    with caplog.at_level(logging.INFO, logger="gyoza.worker"):
        assert detect_gpus() == []
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and "no NVIDIA device" in messages[0]


def test_nvml_failing_while_listing_devices_never_crashes(monkeypatch):
    nvml = fake_nvml([("x", "GPU-x", GIB)])
    nvml.nvmlDeviceGetMemoryInfo = lambda h: (_ for _ in ()).throw(RuntimeError("GPU is lost"))
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    assert detect_gpus() == []
    assert nvml.state["shutdowns"] == 1


def test_resources_have_the_heartbeat_shape_with_detected_cpu_and_ram(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)
    resources = detect_resources()
    assert resources == {
        "cpu_cores": float(psutil.cpu_count()),
        "ram_mb": psutil.virtual_memory().total // (1024 * 1024),
        "gpus": [],
    }


def test_cpu_and_ram_can_be_set_instead_of_detected(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml([("g", "GPU-g", 8 * GIB)]))
    resources = detect_resources(cpu_cores=1.5, ram_mb=2048, gpu_tags={0: ["small"]})
    assert resources["cpu_cores"] == 1.5 and resources["ram_mb"] == 2048
    assert resources["gpus"] == [{"id": 0, "vram_mb": 8192, "tags": ["small"], "name": "g", "uuid": "GPU-g"}]


def test_gpu_tags_parse_per_index_with_plus_joining_tags():
    assert parse_gpu_tags("0=rtx,1=a100+fast") == {0: ["rtx"], 1: ["a100", "fast"]}
    assert parse_gpu_tags("") == {} and parse_gpu_tags(None) == {}


@pytest.mark.parametrize("spec", ["rtx", "a=rtx", "0=", "0"])
def test_malformed_gpu_tags_are_refused_with_the_entry_named(spec):
    with pytest.raises(ValueError, match="bad --gpu-tags entry"):
        parse_gpu_tags(spec)
