"""Placement: does a run fit a worker, which GPUs it gets, and why it waits.

Pure functions over models; the store calls them inside its claim and
liveness transactions, so a second storage backend reuses them unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from .models import Constraints, Gpu, Resources


@dataclass
class Capacity:
    """What a worker has free right now (CPU in millicores)."""

    cpu_milli: int
    ram_mb: int
    gpus: dict[int, Gpu]
    tags: frozenset[str]

    @classmethod
    def of(cls, resources: Resources, tags: Iterable[str]) -> Capacity:
        return cls(
            cpu_milli=resources.cpu_milli,
            ram_mb=resources.ram_mb,
            gpus={g.id: g for g in resources.gpus},
            tags=frozenset(tags),
        )

    def reserve(self, c: Constraints, gpu_ids: Sequence[int]) -> None:
        self.cpu_milli -= c.cpu_milli
        self.ram_mb -= c.ram_mb
        for gid in gpu_ids:
            self.gpus.pop(gid, None)

    def place(self, c: Constraints) -> list[int] | None:
        """GPU ids for ``c`` if it fits here now, else None ([] when no GPU is needed)."""
        if c.cpu_milli > self.cpu_milli or c.ram_mb > self.ram_mb:
            return None
        if not self.tags.issuperset(c.tags):
            return None
        return choose_gpus(self.gpus.values(), c)


def gpu_matches(gpu: Gpu, c: Constraints) -> bool:
    return gpu.vram_mb >= c.vram_mb and set(gpu.tags).issuperset(c.gpu_tags)


def choose_gpus(free: Iterable[Gpu], c: Constraints) -> list[int] | None:
    """Pick ``c.gpus`` GPUs: the smallest VRAM that fits, then lowest ids.

    Taking the smallest suitable GPUs packs work and leaves large GPUs free
    for runs that need them; sorting makes equal choices deterministic.
    """
    if c.gpus == 0:
        return []
    candidates = sorted((g for g in free if gpu_matches(g, c)), key=lambda g: (g.vram_mb, g.id))
    if len(candidates) < c.gpus:
        return None
    return sorted(g.id for g in candidates[: c.gpus])


@dataclass
class WorkerShape:
    """An ONLINE worker as it would be when idle (for "why it waits")."""

    worker_id: str
    resources: Resources
    tags: list[str] = field(default_factory=list)


def explain(c: Constraints, workers: Sequence[WorkerShape]) -> str | None:
    """Why a run with constraints ``c`` fits no ONLINE worker even when idle.

    None when some worker could take it once free. The sentence names the
    first shortfall of the closest worker, so a user knows what to change.
    """
    if not workers:
        return "no worker online"
    missing_tags = [t for t in c.tags if not any(t in w.tags for w in workers)]
    if missing_tags:
        names = ", ".join(f"'{t}'" for t in missing_tags)
        if len(missing_tags) > 1:
            return f"needs tags {names}; no online worker has them"
        return f"needs tag {names}; no online worker has it"
    reasons: list[str] = []
    for w in workers:
        cap = Capacity.of(w.resources, w.tags)
        if cap.place(c) is not None:
            return None
        reasons.append(_shortfall(c, w))
    return reasons[0] if len(workers) == 1 else _largest_shortfall(c, workers)


def _shortfall(c: Constraints, w: WorkerShape) -> str:
    r = w.resources
    if not set(w.tags).issuperset(c.tags):
        missing = ", ".join(f"'{t}'" for t in c.tags if t not in w.tags)
        return f"needs tag {missing}; worker {w.worker_id} lacks it"
    if c.cpu_milli > r.cpu_milli:
        return f"needs {c.cpu_cores:g} CPU cores; largest worker {w.worker_id} has {r.cpu_cores:g}"
    if c.ram_mb > r.ram_mb:
        return f"needs {c.ram_mb} MB RAM; largest worker {w.worker_id} has {r.ram_mb}"
    return _gpu_shortfall(c, w)


def _gpu_shortfall(c: Constraints, w: WorkerShape) -> str:
    need = f"needs {c.gpus} GPU{'s' if c.gpus != 1 else ''}"
    if c.vram_mb:
        need += f" with >= {c.vram_mb} MB VRAM"
    if c.gpu_tags:
        need += " tagged " + ", ".join(f"'{t}'" for t in c.gpu_tags)
    have = sum(1 for g in w.resources.gpus if gpu_matches(g, c))
    return f"{need}; largest worker {w.worker_id} has {have} GPU{'s' if have != 1 else ''}" + (
        (" that qualifies" if have == 1 else " that qualify")
        if (c.vram_mb or c.gpu_tags) and have != len(w.resources.gpus)
        else ""
    )


def _largest_shortfall(c: Constraints, workers: Sequence[WorkerShape]) -> str:
    """Describe the shortfall against the worker that comes closest."""
    tagged = [w for w in workers if set(w.tags).issuperset(c.tags)]
    if not tagged:
        names = ", ".join(f"'{t}'" for t in c.tags)
        return f"needs tags {names} on one worker; no online worker has them all"
    if c.cpu_milli > max(w.resources.cpu_milli for w in tagged):
        best = max(tagged, key=lambda w: w.resources.cpu_milli)
        return _shortfall(c, best)
    if c.ram_mb > max(w.resources.ram_mb for w in tagged):
        best = max(tagged, key=lambda w: w.resources.ram_mb)
        return _shortfall(c, best)
    best = max(tagged, key=lambda w: (sum(1 for g in w.resources.gpus if gpu_matches(g, c)), w.worker_id))
    if sum(1 for g in best.resources.gpus if gpu_matches(g, c)) < c.gpus:
        return _gpu_shortfall(c, best)
    # Every need is met by some worker, but no single worker meets them all.
    parts = [f"{c.cpu_cores:g} CPU cores", f"{c.ram_mb} MB RAM"]
    if c.gpus:
        parts.append(_gpu_shortfall(c, best).split(";")[0].removeprefix("needs "))
    if c.tags:
        parts.append("tag" + ("s " if len(c.tags) > 1 else " ") + ", ".join(f"'{t}'" for t in c.tags))
    return f"needs {', '.join(parts)} on one worker; no online worker has all of them"
