"""Server settings, shared by ``gyoza server``, ``gyoza up`` and ``gyoza.testing``."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal


def _env_keys() -> tuple[str, ...]:
    raw = os.environ.get("GYOZA_API_KEY", "")
    return tuple(k.strip() for k in raw.split(",") if k.strip())


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 5555
    db: str = "./gyoza.db"
    api_keys: tuple[str, ...] = field(default_factory=tuple)
    heartbeat_interval: float = 5.0
    worker_timeout: float = 20.0
    max_body_bytes: int = 1024 * 1024
    sync: Literal["normal", "full"] = "normal"
    # Webhook delivery: per-request timeout, retry base delay and cap (seconds).
    webhook_timeout: float = 10.0
    webhook_backoff_s: float = 1.0
    webhook_max_backoff_s: float = 300.0
    webhook_concurrency: int = 16
