"""The real ComfyUI frontend (served by a test server, driven in Debian's headless Chromium) opens the example
workflows with no missing node and no flagged node (newer frontends flag loaders whose model file is missing:
the workflows' model files are installed first) and turns them into exactly the API prompts the other
end-to-end tests run.

Each test runs against two frontends: the one the host pins (its requirements.txt) and the newest one on PyPI
(``comfy_host.NEWEST_FRONTEND``, extracted by ``scripts/bootstrap.sh``, served with ``--front-end-root``). Every
test opens a fresh browser context and waits until the frontend has finished starting (node types registered,
its startup workflow opened) before loading anything: nothing here waits a fixed time.

The same run takes the README's screenshots (from the host's frontend): ``MVDIFFUSION_SCREENSHOTS=workflows make
test`` (or pytest with that variable) writes ``<name>.png`` next to each workflow; otherwise they go to the
test's temporary folder.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import comfy_host  # noqa: E402
from comfy_host import requirement_name  # noqa: E402
from workflow_api import declared_inputs, ui_to_api  # noqa: E402

pytestmark = [pytest.mark.host, pytest.mark.server, pytest.mark.browser]

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# no connections beyond loopback (the machine's network is closed; the test talks to 127.0.0.1 only)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update"]
VIEWPORT = {"width": 1920, "height": 1080}
WORKFLOWS = ["text_to_panorama.json", "text_to_panorama_sd2.json", "image_to_panorama.json",
             "text_to_full_panorama.json", "scene_texturing.json"]
# first-run dialogs and banners that would cover the canvas
SETTINGS = {"Comfy.TutorialCompleted": True, "Comfy.Minimap.Visible": False}
INIT_SCRIPT = "localStorage.setItem('vueNodesBannerDismissed', 'true')"
STARTUP_TIMEOUT_MS = 180_000
REPORT_TIMEOUT_MS = 30_000

# The frontend has started: window.app is set after its setup (node definitions registered), and its startup
# workflow (restored or default) is the active one; a graph loaded before that would be replaced by it.
STARTED = """() => { const app = window.app;
    return !!(app && app.graph && window.LiteGraph && LiteGraph.registered_node_types.MVDiffusionKSampler
              && app.extensionManager && app.extensionManager.workflow
              && app.extensionManager.workflow.activeWorkflow); }"""
STARTUP_STATE = """() => ({app: !!window.app, graph: !!(window.app && window.app.graph),
    our_nodes_registered: !!(window.LiteGraph && LiteGraph.registered_node_types.MVDiffusionKSampler),
    active_workflow: !!(window.app && window.app.extensionManager && window.app.extensionManager.workflow
                        && window.app.extensionManager.workflow.activeWorkflow)})"""
# The graph holds exactly the given (id, type) pairs (node ids are numbers in older frontends, strings in newer).
GRAPH_IS = """want => { const key = pairs => JSON.stringify(pairs.map(p => p.join('\\u0000')).sort());
    return key(window.app.graph.nodes.map(n => [String(n.id), n.type])) === key(want); }"""
NODES = """() => window.app.graph.nodes.map(n => ({
    id: String(n.id), type: n.type, errors: !!n.has_errors, known: !!LiteGraph.registered_node_types[n.type]}))"""
# How the frontends report a workflow problem: 1.32 "This workflow has missing nodes", 1.45 "Some nodes are
# missing ...", "1 required model is missing", 1.58 "2 issues found".
REPORT = re.compile(r"\bmissing\b|\bissues? found\b", re.IGNORECASE)


def frontend_version_pinned_by(root: Path) -> str:
    """The comfyui-frontend-package version that the host's requirements.txt pins."""
    for line in (root / "requirements.txt").read_text().splitlines():
        if requirement_name(line) == "comfyui-frontend-package" and "==" in line:
            return line.split("==")[1].strip()
    raise AssertionError(f"{root / 'requirements.txt'} pins no comfyui-frontend-package")


def prepare(server, workflow_models) -> None:
    """The workflows' model files and the settings that keep first-run dialogs off the canvas."""
    workflow_models.pano(server)
    workflow_models.pano_outpaint(server)
    workflow_models.sd2(server)
    workflow_models.depth_gen(server)
    settings = server.base / "user" / "default" / "comfy.settings.json"
    settings.parent.mkdir(parents=True, exist_ok=True)
    settings.write_text(json.dumps(SETTINGS))


@pytest.fixture(scope="module")
def host_frontend(comfy_server, comfy_root, workflow_models):
    """(server, frontend version): the session server with the frontend the host pins."""
    prepare(comfy_server, workflow_models)
    return comfy_server, frontend_version_pinned_by(comfy_root)


@pytest.fixture(scope="module")
def newest_frontend(comfy_root, tmp_path_factory, server_starter, workflow_models, require_host):
    """(server, frontend version): a server of the host with the newest frontend from PyPI."""
    static = comfy_host.newest_frontend_root()
    if static is None:
        require_host(f"{comfy_host.NEWEST_FRONTEND} is not extracted: run `make test` (scripts/bootstrap.sh)")
    server = server_starter(tmp_path_factory.mktemp("newest_frontend"), comfy_root, ("--front-end-root", str(static)))
    prepare(server, workflow_models)
    yield server, comfy_host.NEWEST_FRONTEND.split("==")[1]
    server.stop()


@pytest.fixture(scope="module", params=["host", "newest"])
def frontend(request):
    return request.getfixturevalue(f"{request.param}_frontend")


@pytest.fixture(scope="module")
def browser(require_host):
    if not Path(CHROMIUM).exists():
        require_host(f"no Chromium at {CHROMIUM} (Debian package chromium; make test installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def open_frontend(browser, server, version: str):
    """A fresh browser context on the server's frontend, once it has started; checks the frontend's version."""
    context = browser.new_context(viewport=VIEWPORT)
    context.add_init_script(INIT_SCRIPT)
    page = context.new_page()
    # what the page asks for and what it reports as an error, from its first request on
    page.mvd_requests, page.mvd_errors, page.mvd_uncaught = [], [], []
    page.on("request", lambda request: page.mvd_requests.append(request.url))
    page.on("console", lambda msg: page.mvd_errors.append(f"{msg.text} @ {msg.location.get('url', '')}")
            if msg.type == "error" else None)
    page.on("pageerror", lambda error: page.mvd_uncaught.append(f"{error}\n{getattr(error, 'stack', '')}"))
    page.goto(server.url)
    try:
        page.wait_for_function(STARTED, timeout=STARTUP_TIMEOUT_MS)
    except Exception as e:  # noqa: BLE001 - say which part of the startup is missing
        state = page.evaluate(STARTUP_STATE)
        pytest.fail(f"the frontend at {server.url} did not finish starting within {STARTUP_TIMEOUT_MS // 1000} s "
                    f"({state}): {e}", pytrace=False)
    assert page.evaluate("() => window.__COMFYUI_FRONTEND_VERSION__") == version
    return context, page


@pytest.fixture
def page(browser, frontend):
    context, page = open_frontend(browser, *frontend)
    yield page
    context.close()


def load(page, workflow: dict) -> list[dict]:
    """Open a UI workflow in the frontend; returns its nodes as the frontend sees them once it has drawn them."""
    page.evaluate("async wf => { await window.app.loadGraphData(wf); }", workflow)
    page.wait_for_function(GRAPH_IS, arg=[[str(n["id"]), n["type"]] for n in workflow["nodes"]])
    # the flags are set while the load runs; two animation frames later the UI shows them (and any report)
    page.evaluate("() => new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))")
    return page.evaluate(NODES)


def reports(page) -> list[str]:
    """The lines of the page that report a workflow problem (missing nodes, missing models, issues)."""
    return [line for line in page.inner_text("body").splitlines() if REPORT.search(line)]


def wait_until_reported(page, node_id: str) -> None:
    """Poll until the frontend flags the node or shows a report."""
    page.wait_for_function("""([id, pattern]) => window.app.graph.nodes.some(n => String(n.id) === id && n.has_errors)
                              || new RegExp(pattern, 'i').test(document.body.innerText)""",
                           arg=[node_id, REPORT.pattern], timeout=REPORT_TIMEOUT_MS)


def test_a_workflow_with_an_unknown_node_is_reported(page):
    """Control for the checks below: the frontend reports an unknown node type (flags it or says so)."""
    workflow = json.loads((ROOT / "workflows" / WORKFLOWS[0]).read_text())
    workflow["nodes"][0]["type"] = "NoSuchMVDiffusionNode"
    load(page, workflow)
    wait_until_reported(page, str(workflow["nodes"][0]["id"]))
    nodes = page.evaluate(NODES)
    unknown = next(n for n in nodes if n["type"] == "NoSuchMVDiffusionNode")
    assert not unknown["known"]
    assert unknown["errors"] or reports(page), (nodes, reports(page))


def test_the_newest_frontend_flags_a_loader_whose_model_file_is_missing(browser, newest_frontend):
    """Control for the checks below: a model name the server does not list gets its loader flagged."""
    workflow = json.loads((ROOT / "workflows" / WORKFLOWS[1]).read_text())
    loader = next(n for n in workflow["nodes"] if n["type"] == "CheckpointLoaderSimple")
    loader["widgets_values"] = ["no_such_model.safetensors"]
    context, page = open_frontend(browser, *newest_frontend)
    try:
        load(page, workflow)
        page.wait_for_function(f"() => window.app.graph.nodes.some(n => String(n.id) === '{loader['id']}' "
                               "&& n.has_errors)", timeout=REPORT_TIMEOUT_MS)
        flagged = [n for n in page.evaluate(NODES) if n["errors"]]
        assert [n["id"] for n in flagged] == [str(loader["id"])], flagged
    finally:
        context.close()


@pytest.mark.parametrize("name", WORKFLOWS)
def test_the_frontend_opens_the_workflow_with_no_missing_or_flagged_node_and_prompts_what_we_run(
        page, frontend, name, tmp_path, request):
    server, _ = frontend
    workflow = json.loads((ROOT / "workflows" / name).read_text())
    nodes = load(page, workflow)
    assert len(nodes) == len(workflow["nodes"])
    bad = [n for n in nodes if n["errors"] or not n["known"]]
    assert not bad, bad
    assert not reports(page)

    # the frontend's own UI -> API conversion equals the one the server tests and the demo use
    frontend_prompt = page.evaluate("async () => (await window.app.graphToPrompt()).output")
    info = server.object_info()
    ours = ui_to_api(workflow, info)

    def strip(prompt):  # the inputs the nodes declare (the server ignores the rest, e.g. Preview 3D's canvas image)
        return {k: {"class_type": v["class_type"],
                    "inputs": {name: value for name, value in v["inputs"].items()
                               if name in dict(declared_inputs(info[v["class_type"]]))}}
                for k, v in prompt.items()}

    assert strip(frontend_prompt) == strip(ours)

    shot = tmp_path / name.replace(".json", ".png")
    page.screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000
    target = os.environ.get("MVDIFFUSION_SCREENSHOTS")
    if target and request.node.callspec.params["frontend"] == "host":
        shutil.copy(shot, Path(target) / shot.name)


def street_panorama(path: Path, width: int = 1024) -> None:
    from PIL import Image

    image = Image.open(ROOT / "tests/fixtures/panoramas/street_2048x1024.jpg").convert("RGB")
    path.parent.mkdir(parents=True, exist_ok=True)
    image.resize((width, width // 2), Image.BILINEAR).save(path)


CANVAS = ".mvdiffusion-panorama-viewer canvas"
REGISTRY = "https://api.comfy.org/"  # the frontend's node-registry look-ups (not the pack's)
# the viewer's canvas: its pixels' standard deviation (0 for a blank canvas) and a digest of them
CANVAS_STATE = """sel => { const c = document.querySelector(sel); if (!c || !c.width) return null;
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    let s = 0, s2 = 0, h = 0; const n = d.length / 4;
    for (let i = 0; i < d.length; i += 4) { const g = d[i] + d[i + 1] + d[i + 2]; s += g; s2 += g * g;
        h = (h * 31 + g) >>> 0; }
    return {std: Math.sqrt(Math.max(s2 / n - (s / n) ** 2, 0)), digest: h}; }"""


def test_preview_panorama_shows_a_360_viewer_that_turns_and_copies_its_view(page, frontend, request):
    from workflow_api import UIGraph

    server, _ = frontend
    street_panorama(server.base / "input" / "street_pano.png")
    g = UIGraph(server.object_info())
    image = g.add("LoadImage", (40, 60), size=(300, 320), image="street_pano.png")
    g.add("MVDiffusionPreviewPanorama", (380, 60), size=(640, 420), panorama=image.out(0))
    view = g.add("MVDiffusionPanoramaView", (380, 520), panorama=image.out(0), yaw=0.0, pitch=0.0, fov=90.0,
                 width=512, height=512)
    load(page, g.to_ui())
    page.evaluate("async () => { await window.app.queuePrompt(0, 1); }")
    page.wait_for_function(f"() => {{ const s = ({CANVAS_STATE})('{CANVAS}'); return s && s.std > 10; }}",
                           timeout=120_000)
    before = page.evaluate(CANVAS_STATE, CANVAS)
    box = page.locator(CANVAS).bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x - 120, y + 40, steps=6)
    page.mouse.up()
    page.wait_for_function(f"d => ({CANVAS_STATE})('{CANVAS}').digest !== d", arg=before["digest"])
    page.mouse.wheel(0, 300)  # zoom out: a wider field of view
    page.wait_for_function("sel => document.querySelector(sel).parentElement.innerText.includes('fov 12')",
                           arg=CANVAS)
    page.get_by_text("use this view").click()
    widgets = page.evaluate("""id => Object.fromEntries(window.app.graph.getNodeById(id).widgets
                                   .filter(w => ['yaw', 'pitch', 'fov'].includes(w.name)).map(w => [w.name, w.value]))""",
                            view.node_id)
    assert widgets["yaw"] > 5 and widgets["pitch"] > 1 and widgets["fov"] > 110, widgets  # grabbed right and up
    # the viewer's picture comes from the server that ran the node; nothing else leaves the machine except the
    # frontend's own registry look-ups of the nodes on the canvas (it makes them for core nodes too)
    assert any(u.startswith(f"{server.url}/view?filename=mvdiffusion_panorama") for u in page.mvd_requests)
    foreign = [u for u in page.mvd_requests if not u.startswith((server.url, "data:", "blob:"))
               and not u.startswith(REGISTRY)]
    assert not foreign, foreign
    # no uncaught exception, and no console error from the viewer's script or its requests (the frontends log
    # errors of their own here, with or without this pack: 404s for optional user files, the newest frontend's
    # jobs API on an older host, blocked look-ups of model metadata)
    assert not page.mvd_uncaught, page.mvd_uncaught
    ours = [e for e in page.mvd_errors if "panorama_viewer" in e or "/view?" in e
            or ("mvdiffusion" in e.lower() and REGISTRY not in e)]
    assert not ours, ours
    shot = Path(os.environ.get("MVDIFFUSION_SCREENSHOTS") or request.getfixturevalue("tmp_path"))
    if request.node.callspec.params["frontend"] == "host" or not os.environ.get("MVDIFFUSION_SCREENSHOTS"):
        page.locator(".mvdiffusion-panorama-viewer").screenshot(path=str(shot / "panorama_viewer.png"))


def test_a_png_from_save_panorama_drags_back_into_the_frontend_as_its_workflow(page, frontend):
    import time

    from workflow_api import UIGraph

    server, _ = frontend
    g = UIGraph(server.object_info())
    image = g.add("EmptyImage", (40, 60), width=256, height=128, batch_size=1, color=0x336699)
    g.add("MVDiffusionSavePanorama", (380, 60), panorama=image.out(0), filename_prefix="dragback/pano360",
          format="png", full_sphere=True, quality=95)
    workflow = g.to_ui()
    load(page, workflow)
    seen = set(server.get("/history"))
    page.evaluate("async () => { await window.app.queuePrompt(0, 1); }")
    deadline, files = time.time() + 120, []
    while not files and time.time() < deadline:
        new = {k: v for k, v in server.get("/history").items() if k not in seen}
        files = [f for entry in new.values() for f in server.output_files(entry) if "dragback" in str(f)]
        time.sleep(0.5)
    assert files, "the frontend's run saved no panorama"
    rel = files[0].relative_to(server.output)
    page.evaluate("() => window.app.graph.clear()")
    page.evaluate("""async url => { const blob = await (await fetch(url)).blob();
        await window.app.handleFile(new File([blob], 'pano360.png', {type: 'image/png'})); }""",
                  f"{server.url}/view?filename={rel.name}&subfolder={rel.parent.as_posix()}&type=output")
    page.wait_for_function(GRAPH_IS, arg=[[str(n["id"]), n["type"]] for n in workflow["nodes"]])
