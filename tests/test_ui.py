"""The web dashboard (/ui) in a real headless Chromium, against a real server.

A fake worker is driven through the client (heartbeat, claim, events), and
the page must follow without reloads. Each test saves screenshots to its
tmp_path and prints their paths (``pytest -s`` or ``-rP`` shows them).

Needs Debian's ``chromium`` and Playwright for Python (no ``playwright
install``: the system browser is used). Skipped when either is missing,
except under ``CI=true``, where that is a failure.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from gyoza.client import GyozaAPIError, GyozaClient
from gyoza.testing import GyozaTestServer

UI_DIR = Path(__file__).resolve().parent.parent / "gyoza" / "ui"
CHROMIUM = os.environ.get("GYOZA_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
T = 8000  # ms: the longest any expectation waits (the runs page ticks every 1.5 s)

WORKER = "gpu-box-1"
RESOURCES = {
    "cpu_cores": 16,
    "ram_mb": 65536,
    "gpus": [
        {"id": 0, "vram_mb": 24576, "tags": ["ampere"], "name": "NVIDIA RTX A5000"},
        {"id": 1, "vram_mb": 81920, "tags": ["hopper"], "name": "NVIDIA H100 80GB HBM3"},
    ],
}
TRAIN_SCHEMA = {
    "type": "object",
    "properties": {
        "prompt": {"type": "string", "description": "what to generate"},
        "steps": {"type": "integer", "default": 10, "minimum": 1},
        "fp16": {"type": "boolean", "default": True},
        "size": {"type": "string", "enum": ["small", "large"], "default": "small"},
    },
    "required": ["prompt"],
}


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(reason)


# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not os.path.exists(CHROMIUM):
        _skip_or_fail(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _skip_or_fail("Playwright for Python is not installed (pip install -e '.[dev]')")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def ui_server(tmp_path) -> Iterator[GyozaTestServer]:
    # Long liveness timings: the fake worker heartbeats only when a test says so.
    with GyozaTestServer(db=str(tmp_path / "gyoza.db"), api_keys=(), worker_timeout=120.0) as s:
        yield s


@pytest.fixture
def api(ui_server: GyozaTestServer) -> Iterator[GyozaClient]:
    with ui_server.client() as c:
        yield c


class Page:
    """A browser tab on the dashboard that records every request it makes."""

    def __init__(self, browser, server: GyozaTestServer, tmp_path: Path, width: int = 1280):
        self.server = server
        self.tmp_path = tmp_path
        self.context = browser.new_context(viewport={"width": width, "height": 900})
        self.page = self.context.new_page()
        self.page.set_default_timeout(T)
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))

    def open(self, fragment: str = "") -> None:
        self.page.goto(self.server.url + "/ui/" + fragment)

    def shot(self, name: str, full_page: bool = True) -> Path:
        path = self.tmp_path / f"{name}.png"
        self.page.evaluate("window.scrollTo(0, 0)")  # a sticky header stays on top
        self.page.screenshot(path=str(path), full_page=full_page)
        print(f"screenshot: {path}")
        return path

    def fits(self, width: int = 390) -> None:
        """At a phone's width the page needs no sideways scrolling."""
        self.page.set_viewport_size({"width": width, "height": 844})
        self.page.wait_for_timeout(100)
        assert self.page.evaluate("document.documentElement.scrollWidth") <= width
        self.shot(f"{self.page.title().split(' ')[0].lower()}-{width}")

    def check_clean(self) -> None:
        """No JS errors, and no request left the server's origin."""
        assert not self.errors, self.errors
        origin = urlsplit(self.server.url).netloc
        foreign = [u for u in self.requests if not u.startswith("data:") and urlsplit(u).netloc != origin]
        assert not foreign, foreign

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def tab(browser, ui_server, tmp_path) -> Iterator[Page]:
    p = Page(browser, ui_server, tmp_path)
    yield p
    p.close()


def expect(locator):
    from playwright.sync_api import expect as _expect

    return _expect(locator)


def row(page, run_id: str):
    return page.locator(f'tr[data-run-id="{run_id}"]')


# -- without a browser ------------------------------------------------------------------------


def test_ui_is_served_without_a_key_and_api_still_needs_one(tmp_path):
    with GyozaTestServer(db=str(tmp_path / "k.db"), api_keys=("k1",)) as s:
        with httpx.Client(base_url=s.url) as h:
            root = h.get("/", follow_redirects=False)
            assert root.status_code in (302, 307) and root.headers["location"] == "/ui/"
            page = h.get("/ui/")
            assert page.status_code == 200 and "text/html" in page.headers["content-type"]
            assert 'src="app.js"' in page.text
            assert h.get("/ui/app.js").headers["content-type"].startswith(("text/javascript", "application/javascript"))
            assert h.get("/ui/app.css").status_code == 200
            assert h.get("/runs").status_code == 401
            assert h.get("/runs", headers={"X-API-Key": "k1"}).status_code == 200
            assert h.get("/ui/nope.js").status_code == 404


def test_ui_files_make_no_external_requests_and_never_use_innerhtml():
    files = {p.name: p.read_text() for p in UI_DIR.iterdir() if p.suffix in (".html", ".css", ".js")}
    assert set(files) >= {"index.html", "app.css", "app.js"}
    for name, text in files.items():
        assert not re.search(r"""(src|href|url)\s*[=(]\s*["']?(https?:)?//""", text), name
        assert "@import" not in text and "@font-face" not in text, name
    js = files["app.js"]
    for sink in (r"\.(inner|outer)HTML\s*[+]?=", r"insertAdjacentHTML\(", r"document\.write",
                 r"\beval\(", r"new Function\(", r"createContextualFragment"):
        assert not re.search(sink, js), sink


# -- in the browser ---------------------------------------------------------------------------


@pytest.mark.browser
def test_runs_list_updates_live_with_progress_and_scheduling(tab, api, ui_server, tmp_path):
    api.upsert_definition(
        {"name": "train", "version": "2", "image": "ghcr.io/acme/train:2",
         "input_schema": TRAIN_SCHEMA, "constraints": {"gpus": 1, "vram_mb": 20000}}
    )
    api.heartbeat(WORKER, RESOURCES, tags=["lab"])
    done = api.create_run("busybox:latest", {"n": 1})
    ours = api.create_run_from_definition("train", {"prompt": "a gyoza"})
    huge = api.create_run("ghcr.io/acme/big:1", {}, constraints={"gpus": 4, "vram_mb": 80000})
    sched = api.get_run(huge["id"])["scheduling"]
    assert sched, "the server should explain why a 4-GPU run cannot be placed"

    # The page starts at / (redirect) and must never reload from here on.
    tab.page.goto(ui_server.url + "/")
    assert tab.page.url.endswith("/ui/")
    tab.page.evaluate("window.__noReload = 'still here'")
    p = tab.page
    expect(row(p, ours["id"]).locator(".c-state")).to_have_text("PENDING")
    expect(row(p, ours["id"]).locator(".c-op")).to_have_text("train@2")
    expect(row(p, huge["id"]).locator(".c-progress")).to_have_text(sched)
    # Newest first.
    ids = p.locator("#runs-table tbody tr").evaluate_all("rows => rows.map(r => r.dataset.runId)")
    assert ids == [huge["id"], ours["id"], done["id"]]

    # A worker takes two runs; the list follows: state, worker, GPU, progress.
    ops = {op["run_id"]: op for op in api.claim_ops(WORKER)}
    assert set(ops) == {ours["id"], done["id"]}
    expect(row(p, ours["id"]).locator(".c-state")).to_have_text("ASSIGNED")
    api.add_event(ours["id"], "STARTED", "", attempt=1, seq=1)
    api.add_event(ours["id"], "PROGRESS", 30, attempt=1, seq=2)
    expect(row(p, ours["id"]).locator(".c-state")).to_have_text("RUNNING")
    expect(row(p, ours["id"]).locator(".c-progress")).to_have_text("30%")
    gpu = ops[ours["id"]]["gpu_ids"]
    expect(row(p, ours["id"]).locator(".c-worker")).to_have_text(f"{WORKER} · GPU {gpu[0]}")
    expect(row(p, ours["id"]).locator(".c-attempt")).to_have_text("1/3")
    api.add_event(ours["id"], "PROGRESS", 72, attempt=1, seq=3)
    expect(row(p, ours["id"]).locator(".c-progress")).to_have_text("72%")
    api.add_event(done["id"], "STARTED", "", attempt=1, seq=1)
    api.add_event(done["id"], "COMPLETED", "", {"outputs": {"ok": True}}, attempt=1, seq=2)
    expect(row(p, done["id"]).locator(".c-state")).to_have_text("COMPLETED")
    expect(row(p, done["id"]).locator(".c-progress")).to_have_text("100%")
    assert p.evaluate("window.__noReload") == "still here"

    # Filters.
    p.select_option("#filter-state", "RUNNING")
    expect(p.locator("#runs-table tbody tr")).to_have_count(1)
    expect(row(p, ours["id"])).to_be_visible()
    p.select_option("#filter-state", "")
    p.select_option("#filter-definition", "train")
    expect(p.locator("#runs-table tbody tr")).to_have_count(1)
    p.select_option("#filter-definition", "")
    expect(p.locator("#runs-table tbody tr")).to_have_count(3)
    tab.shot("runs")

    # Workers: the GPU row names the run that holds it; resources used of total.
    p.click("nav >> text=Workers")
    card = p.locator(f'[data-worker-id="{WORKER}"]')
    expect(card.locator(f'tr[data-gpu="{gpu[0]}"]')).to_contain_text(ours["id"][:8])
    other = 1 - gpu[0]
    expect(card.locator(f'tr[data-gpu="{other}"]')).to_contain_text("free")
    expect(card).to_contain_text("ONLINE")
    expect(card).to_contain_text("NVIDIA H100 80GB HBM3")
    expect(card).to_contain_text("1 / 16 used")
    tab.shot("workers")

    # Narrow screen and dark theme: no sideways scrolling, still readable.
    p.set_viewport_size({"width": 390, "height": 844})
    p.click("nav >> text=Runs")
    expect(row(p, ours["id"]).locator(".c-progress")).to_have_text("72%")
    assert p.evaluate("document.documentElement.scrollWidth") <= 390
    tab.shot("runs-390")
    p.emulate_media(color_scheme="dark")
    bg = p.evaluate("getComputedStyle(document.body).backgroundColor")
    assert bg != "rgb(247, 247, 245)"
    tab.shot("runs-390-dark")
    tab.check_clean()


@pytest.mark.browser
def test_run_detail_log_tail_cancel_and_refused_retry(tab, api, ui_server):
    api.heartbeat(WORKER, RESOURCES)
    run = api.create_run(
        "busybox:latest", {"words": ["a", "b"]}, retry_policy={"max_attempts": 1},
        event_delivery={"url": "http://127.0.0.1:9/hook"},
    )
    rid = run["id"]
    [op] = api.claim_ops(WORKER)
    api.add_event(rid, "STARTED", "", attempt=1, seq=1)
    api.add_event(rid, "LOG", "loading weights\nweights ready", attempt=1, seq=2)

    tab.open(f"#/runs/{rid}")
    p = tab.page
    expect(p.locator("#run-state")).to_have_text("RUNNING")
    expect(p.locator("#run-log")).to_have_text("loading weights\nweights ready\n")
    expect(p.locator("#run-timeline")).to_contain_text("QUEUED")
    expect(p.locator("#run-timeline")).to_contain_text("ASSIGNED")
    expect(p.locator("#run-timeline")).to_contain_text("STARTED")
    expect(p.locator("#run-inputs")).to_contain_text('"words"')
    expect(p.locator("#run-deliveries")).to_contain_text("#1 QUEUED")

    # The log tail grows as the worker sends lines (long-poll, no reload).
    for i, line in enumerate(["step 1/3", "step 2/3", "step 3/3"], start=3):
        api.add_event(rid, "LOG", line, attempt=1, seq=i)
        expect(p.locator("#run-log")).to_contain_text(line)
    api.add_event(rid, "PROGRESS", 66, attempt=1, seq=9)
    expect(p.locator("#run-progress")).to_contain_text("66%")
    expect(p.locator("#run-attempts tr[data-attempt='1']")).to_contain_text(WORKER)
    tab.shot("run-detail")

    # Cancel (two steps); the API agrees.
    p.click("#cancel-run")
    p.click("#confirm-cancel")
    expect(p.locator("#run-state")).to_have_text("CANCELLED")
    assert api.get_run(rid)["state"] == "CANCELLED"
    expect(p.locator("#run-timeline")).to_contain_text("CANCELLED")
    expect(p.locator("#cancel-run")).to_be_disabled()

    # Retry is refused (max_attempts 1): the server's own words are shown.
    with pytest.raises(GyozaAPIError) as refused:
        api.retry_run(rid)
    p.click("#retry-run")
    expect(p.locator("#action-message")).to_contain_text(refused.value.detail)
    expect(p.locator("#action-message")).to_contain_text("Retry refused")
    expect(p.locator("#run-attempts tr[data-attempt='1']")).to_contain_text("CANCELLED")
    tab.shot("run-detail-cancelled")
    tab.fits(390)
    tab.check_clean()


@pytest.mark.browser
def test_definitions_and_run_form_validate_against_the_schema(tab, api, ui_server):
    api.upsert_definition({"name": "train", "version": "1", "image": "ghcr.io/acme/train:1"})
    api.upsert_definition(
        {"name": "train", "version": "2", "image": "ghcr.io/acme/train:2",
         "description": "fine-tune a model", "input_schema": TRAIN_SCHEMA}
    )
    api.upsert_definition({"name": "echo", "version": "0.1", "image": "busybox:latest"})

    tab.open("#/definitions")
    p = tab.page
    expect(p.locator('tr[data-definition="train"]')).to_contain_text("2")
    expect(p.locator('tr[data-definition="train"]')).to_contain_text("1, 2".replace("1, 2", "2, 1"))
    expect(p.locator('tr[data-definition="echo"]')).to_contain_text("busybox:latest")
    tab.shot("definitions")

    p.click('tr[data-definition="train"] a')
    fields = p.locator("#input-schema")
    expect(fields.locator('tr[data-field="steps"]')).to_contain_text("integer")
    expect(fields.locator('tr[data-field="steps"]')).to_contain_text("10")
    expect(fields.locator('tr[data-field="prompt"]')).to_contain_text("yes")
    expect(fields.locator('tr[data-field="size"]')).to_contain_text('one of "small", "large"')

    # A missing required input: the server's 400 detail, shown as is.
    with pytest.raises(GyozaAPIError) as bad:
        api.create_run_from_definition("train", {})
    p.click("#run-submit")
    expect(p.locator("#run-form-error")).to_contain_text(bad.value.detail)
    # A wrong type is the server's to explain too.
    p.fill('#run-form [data-field="prompt"]', "a dumpling")
    p.fill('#run-form [data-field="steps"]', "many")
    p.click("#run-submit")
    expect(p.locator("#run-form-error")).to_contain_text("steps")
    tab.shot("definition-form-error")

    p.fill('#run-form [data-field="steps"]', "25")
    p.select_option('#run-form [data-field="size"]', '"large"')
    p.click("#run-submit")
    p.wait_for_url(re.compile(r".*#/runs/[^/?]+$"))
    rid = p.url.rsplit("/", 1)[1]
    expect(p.locator("#run-state")).to_have_text("PENDING")
    created = api.get_run(rid)
    assert created["definition"] == "train" and created["version"] == "2"
    assert created["inputs"] == {"prompt": "a dumpling", "steps": 25, "fp16": True, "size": "large"}
    tab.shot("definition-run-created")
    p.go_back()
    expect(p.locator("#input-schema")).to_be_visible()
    tab.fits(390)
    tab.check_clean()


@pytest.mark.browser
def test_key_prompt_when_the_server_has_keys(browser, tmp_path):
    with GyozaTestServer(db=str(tmp_path / "keys.db"), api_keys=("right-key",)) as s:
        with s.client() as c:
            run = c.create_run("busybox:latest", {})
        tab = Page(browser, s, tmp_path)
        try:
            tab.page.goto(s.url + "/")
            p = tab.page
            dialog = p.locator("#key-dialog")
            expect(dialog).to_be_visible()
            expect(dialog).to_contain_text("API key")
            tab.shot("key-prompt")

            p.fill("#key-input", "wrong-key")
            p.click("#key-submit")
            expect(p.locator("#key-error")).to_contain_text("refused")
            expect(p.locator("#key-error")).to_contain_text("wrong API key")
            expect(dialog).to_be_visible()

            p.fill("#key-input", "right-key")
            p.click("#key-submit")
            expect(dialog).to_be_hidden()
            expect(row(p, run["id"]).locator(".c-state")).to_have_text("PENDING")
            assert p.evaluate("sessionStorage.getItem('gyoza.apiKey')") == "right-key"
            # Other pages work with the stored key, without asking again.
            p.click("nav >> text=Workers")
            expect(p.locator("#workers")).to_contain_text("No worker")
            expect(dialog).to_be_hidden()
            assert not any("key" in u.lower() for u in tab.requests), "a key must never be in a URL"
            tab.check_clean()
        finally:
            tab.close()
