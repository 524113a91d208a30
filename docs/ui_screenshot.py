"""Regenerate docs/ui-runs.png: a seeded server, a fake worker, headless Chromium.

    .venv/bin/python docs/ui_screenshot.py [OUT.png]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

from gyoza.testing import GyozaTestServer

GPU_BOX = {
    "cpu_cores": 32,
    "ram_mb": 131072,
    "gpus": [
        {"id": 0, "vram_mb": 24564, "tags": ["ampere"], "name": "NVIDIA RTX A5000"},
        {"id": 1, "vram_mb": 81559, "tags": ["hopper"], "name": "NVIDIA H100 80GB HBM3"},
    ],
}
CPU_BOX = {"cpu_cores": 8, "ram_mb": 16384, "gpus": []}


def seed(c) -> str:
    c.upsert_definition({"name": "embed", "version": "1.4", "image": "ghcr.io/acme/embed:1.4"})
    c.upsert_definition({"name": "train", "version": "3", "image": "ghcr.io/acme/train:3",
                         "constraints": {"gpus": 1, "cpu_cores": 4, "ram_mb": 16384}})
    c.heartbeat("gpu-box", GPU_BOX, tags=["lab"])
    c.heartbeat("cpu-box", CPU_BOX)

    def finish(worker, run, ok):
        c.claim_ops(worker)
        c.add_event(run["id"], "STARTED", "", attempt=1)
        c.add_event(run["id"], "LOG", "working", attempt=1)
        if ok:
            c.add_event(run["id"], "PROGRESS", 100, attempt=1)
            c.add_event(run["id"], "COMPLETED", "", {"outputs": {"vectors": 1200}}, attempt=1)
        else:
            c.add_event(run["id"], "PROGRESS", 40, attempt=1)
            c.add_event(run["id"], "FAILED", "", {"error_message": "exit code 1: file not found",
                                                   "exit_code": 1, "reason": "FAILED"}, attempt=1)

    finish("cpu-box", c.create_run_from_definition("embed", {"corpus": "wiki"}), True)
    finish("cpu-box", c.create_run("busybox:latest", {}, retry_policy={"max_attempts": 1}), False)
    a = c.create_run_from_definition("train", {"lr": 3e-4})
    time.sleep(0.3)
    b = c.create_run_from_definition("train", {"lr": 1e-4})
    c.claim_ops("gpu-box")
    for run, pct in ((a, 64), (b, 12)):
        c.add_event(run["id"], "STARTED", "", attempt=1)
        c.add_event(run["id"], "PROGRESS", pct, attempt=1)
    c.create_run_from_definition("train", {"lr": 5e-5})
    c.create_run("ghcr.io/acme/llm-finetune:7", {}, constraints={"gpus": 4, "vram_mb": 80000})
    return a["id"]


def main(out: Path) -> None:
    with GyozaTestServer(api_keys=(), worker_timeout=120.0) as s, s.client() as c:
        running = seed(c)
        with sync_playwright() as p:
            b = p.chromium.launch(executable_path="/usr/bin/chromium",
                                  args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
            page = b.new_page(viewport={"width": 1280, "height": 470})
            page.emulate_media(color_scheme="light")
            page.goto(s.url + "/ui/")
            expect(page.locator(f'tr[data-run-id="{running}"] .c-progress')).to_have_text("64%")
            time.sleep(2)
            page.screenshot(path=str(out))
            b.close()
    print(f"{out}: {out.stat().st_size} bytes")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).with_name("ui-runs.png")))
