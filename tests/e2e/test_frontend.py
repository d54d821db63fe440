"""The real ComfyUI frontend (served by the test server, driven in Debian's headless Chromium) opens the example
workflows with no missing node and turns them into exactly the API prompts the other end-to-end tests run.

The same run takes the README's screenshots: ``MVDIFFUSION_SCREENSHOTS=workflows make test`` (or pytest with
that variable) writes ``<name>.png`` next to each workflow; otherwise they go to the test's temporary folder.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
from workflow_api import ui_to_api  # noqa: E402

pytestmark = [pytest.mark.host, pytest.mark.server, pytest.mark.browser]

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# no connections beyond loopback (the machine's network is closed; the test talks to 127.0.0.1 only)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update"]
VIEWPORT = {"width": 1920, "height": 1080}
WORKFLOWS = ["text_to_panorama.json", "text_to_panorama_sd2.json"]
# first-run dialogs and banners that would cover the canvas
SETTINGS = {"Comfy.TutorialCompleted": True, "Comfy.Minimap.Visible": False}
INIT_SCRIPT = "localStorage.setItem('vueNodesBannerDismissed', 'true')"


@pytest.fixture(scope="module")
def page(comfy_server, require_host):
    if not Path(CHROMIUM).exists():
        require_host(f"no Chromium at {CHROMIUM} (Debian package chromium; make test installs it)")
    from playwright.sync_api import sync_playwright

    settings = comfy_server.base / "user" / "default" / "comfy.settings.json"
    settings.parent.mkdir(parents=True, exist_ok=True)
    settings.write_text(json.dumps(SETTINGS))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport=VIEWPORT)
        context.add_init_script(INIT_SCRIPT)
        page = context.new_page()
        page.goto(comfy_server.url)
        page.wait_for_function("() => window.app && window.app.graph && window.LiteGraph", timeout=180_000)
        yield page
        browser.close()


def load(page, workflow: dict) -> list[dict]:
    """Open a UI workflow in the frontend; returns its nodes as the frontend sees them."""
    page.evaluate("async wf => { await window.app.loadGraphData(wf); }", workflow)
    page.wait_for_timeout(1000)
    return page.evaluate("""() => window.app.graph.nodes.map(n => ({
        id: n.id, type: n.type, errors: !!n.has_errors, known: !!LiteGraph.registered_node_types[n.type]}))""")


def test_a_workflow_with_an_unknown_node_is_reported_missing(page):
    """Control for the check below: the frontend flags an unknown node type."""
    workflow = json.loads((ROOT / "workflows" / WORKFLOWS[0]).read_text())
    workflow["nodes"][0]["type"] = "NoSuchMVDiffusionNode"
    nodes = load(page, workflow)
    assert {"id": 1, "type": "NoSuchMVDiffusionNode", "errors": True, "known": False} in nodes
    assert "missing nodes" in page.inner_text("body").lower()
    page.keyboard.press("Escape")


@pytest.mark.parametrize("name", WORKFLOWS)
def test_the_frontend_opens_the_workflow_with_no_missing_node_and_prompts_what_we_run(page, comfy_server, name,
                                                                                      tmp_path):
    workflow = json.loads((ROOT / "workflows" / name).read_text())
    nodes = load(page, workflow)
    assert len(nodes) == len(workflow["nodes"])
    bad = [n for n in nodes if n["errors"] or not n["known"]]
    assert not bad, bad
    assert "missing nodes" not in page.inner_text("body").lower()

    # the frontend's own UI -> API conversion equals the one the server tests and the demo use
    frontend = page.evaluate("async () => (await window.app.graphToPrompt()).output")
    ours = ui_to_api(workflow, comfy_server.object_info())
    strip = lambda p: {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in p.items()}  # noqa: E731
    assert strip(frontend) == strip(ours)

    shot = tmp_path / name.replace(".json", ".png")
    page.screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000
    target = os.environ.get("MVDIFFUSION_SCREENSHOTS")
    if target:
        shutil.copy(shot, Path(target) / shot.name)
