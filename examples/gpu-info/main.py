"""gpu-info: report nvidia-smi style GPU information through NVML (pynvml).

Run it by hand on a machine with an NVIDIA driver:

    pip install nvidia-ml-py
    python examples/gpu-info/main.py

Exit codes: 0 ok, 2 NVML unavailable (no driver or no GPU given to the
container), 3 a GPU has less free memory than the ``min_free_mb`` input.
"""

from __future__ import annotations

import sys
from typing import Any

from gyoza import op


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _maybe(fn, *args) -> Any:
    """NVML queries a GPU may not support (power on some boards...) give None."""
    import pynvml

    try:
        return fn(*args)
    except pynvml.NVMLError:
        return None


def describe(index: int) -> dict[str, Any]:
    import pynvml

    handle = pynvml.nvmlDeviceGetHandleByIndex(index)
    memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
    util = _maybe(pynvml.nvmlDeviceGetUtilizationRates, handle)
    power = _maybe(pynvml.nvmlDeviceGetPowerUsage, handle)
    limit = _maybe(pynvml.nvmlDeviceGetEnforcedPowerLimit, handle)
    capability = _maybe(pynvml.nvmlDeviceGetCudaComputeCapability, handle)
    return {
        "index": index,
        "name": _text(pynvml.nvmlDeviceGetName(handle)),
        "uuid": _text(pynvml.nvmlDeviceGetUUID(handle)),
        "pci_bus_id": _text(pynvml.nvmlDeviceGetPciInfo(handle).busId),
        "memory_total_mb": memory.total // (1024 * 1024),
        "memory_used_mb": memory.used // (1024 * 1024),
        "memory_free_mb": memory.free // (1024 * 1024),
        "utilization_pct": None if util is None else util.gpu,
        "temperature_c": _maybe(pynvml.nvmlDeviceGetTemperature, handle,
                                pynvml.NVML_TEMPERATURE_GPU),
        "power_w": None if power is None else round(power / 1000, 1),
        "power_limit_w": None if limit is None else round(limit / 1000, 1),
        "compute_capability": None if capability is None else f"{capability[0]}.{capability[1]}",
    }


def table(driver: str, cuda: str, gpus: list[dict[str, Any]]) -> list[str]:
    """The familiar nvidia-smi summary, one line per GPU."""
    lines = [f"NVIDIA driver {driver}   CUDA {cuda}",
             f"{'GPU':<4}{'NAME':<28}{'MEMORY USED / TOTAL':>22}{'UTIL':>6}{'TEMP':>6}{'POWER':>14}"]
    for g in gpus:
        util = "-" if g["utilization_pct"] is None else f"{g['utilization_pct']}%"
        temp = "-" if g["temperature_c"] is None else f"{g['temperature_c']}C"
        power = "-" if g["power_w"] is None else f"{g['power_w']:.0f}W / {g['power_limit_w'] or 0:.0f}W"
        memory = f"{g['memory_used_mb']} / {g['memory_total_mb']} MiB"
        lines.append(f"{g['index']:<4}{g['name'][:27]:<28}{memory:>22}{util:>6}{temp:>6}{power:>14}")
    return lines


def main() -> int:
    min_free_mb = int(op.inputs().get("min_free_mb", 0))
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as exc:  # ImportError or NVMLError_LibraryNotFound / DriverNotLoaded
        print(f"NVML unavailable ({type(exc).__name__}: {exc}): run this op with "
              "constraints.gpus >= 1 on a worker with an NVIDIA driver and the NVIDIA "
              "Container Toolkit", file=sys.stderr)
        return 2
    try:
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
        cuda_raw = _maybe(pynvml.nvmlSystemGetCudaDriverVersion)
        cuda = "-" if cuda_raw is None else f"{cuda_raw // 1000}.{cuda_raw % 1000 // 10}"
        count = pynvml.nvmlDeviceGetCount()
        gpus = []
        for index in range(count):
            gpus.append(describe(index))
            op.progress(100 * (index + 1) / count)
    finally:
        pynvml.nvmlShutdown()
    for line in table(driver, cuda, gpus):
        op.log(line)
    op.set_outputs(driver_version=driver, cuda_driver_version=cuda, gpus=gpus)
    if not gpus:
        print("NVML sees no GPU: was the container given one?", file=sys.stderr)
        return 2
    short = [g for g in gpus if g["memory_free_mb"] < min_free_mb]
    if short:
        print(f"GPU {short[0]['index']} has {short[0]['memory_free_mb']} MiB free, "
              f"less than min_free_mb={min_free_mb}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
