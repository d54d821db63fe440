// The 360° viewer of "Preview Panorama" (MVDiffusionPreviewPanorama): an equirectangular image looked at
// through a perspective camera, drawn on a 2D canvas by reprojecting every canvas pixel (no WebGL, no network:
// the image comes from the ComfyUI server that ran the node, through /view).
//
// Conventions (geometry/equirect.py): longitude 0 at the image's centre column, positive to the right;
// latitude positive up. Yaw turns right, pitch looks up, fov is the horizontal field of view.

const NODE = "MVDiffusionPreviewPanorama";
const MAX_SOURCE = 4096; // wider panoramas are downscaled once (the viewer says so)

async function getApp() {
  if (window.comfyAPI?.app?.app) return window.comfyAPI.app.app;
  return (await import("../../scripts/app.js")).app;
}

function viewUrl(entry) {
  const q = new URLSearchParams({ filename: entry.filename, subfolder: entry.subfolder || "", type: entry.type });
  return `/view?${q.toString()}`;
}

class PanoramaViewer {
  constructor(node) {
    this.node = node;
    this.yaw = 0; this.pitch = 0; this.fov = 90;
    this.root = document.createElement("div");
    this.root.className = "mvdiffusion-panorama-viewer";
    this.root.style.cssText = "position:relative;width:100%;height:100%;min-height:180px;background:#111;";
    this.canvas = document.createElement("canvas");
    this.canvas.style.cssText = "width:100%;height:100%;display:block;cursor:grab;";
    this.status = document.createElement("div");
    this.status.style.cssText = "position:absolute;left:6px;bottom:4px;font:11px sans-serif;color:#ddd;" +
      "text-shadow:0 0 2px #000;pointer-events:none;";
    this.status.textContent = "run the workflow to see the panorama";
    const bar = document.createElement("div");
    bar.style.cssText = "position:absolute;right:4px;top:4px;display:flex;gap:4px;";
    this.useButton = this.button("use this view", () => this.useThisView());
    this.fullButton = this.button("full screen", () => this.toggleFullscreen());
    bar.append(this.useButton, this.fullButton);
    this.root.append(this.canvas, this.status, bar);
    this.bindPointer();
  }

  button(text, onClick) {
    const b = document.createElement("button");
    b.textContent = text;
    b.style.cssText = "font:11px sans-serif;padding:2px 6px;background:#333;color:#eee;border:1px solid #555;" +
      "border-radius:3px;cursor:pointer;";
    b.addEventListener("click", (e) => { e.stopPropagation(); onClick(); });
    b.addEventListener("pointerdown", (e) => e.stopPropagation());
    return b;
  }

  bindPointer() {
    let last = null;
    this.canvas.addEventListener("pointerdown", (e) => {
      last = [e.clientX, e.clientY];
      this.canvas.setPointerCapture(e.pointerId);
      this.canvas.style.cursor = "grabbing";
      e.stopPropagation(); e.preventDefault();
    });
    this.canvas.addEventListener("pointermove", (e) => {
      if (!last) return;
      const degPerPx = this.fov / Math.max(this.canvas.clientWidth, 1);
      this.yaw -= (e.clientX - last[0]) * degPerPx;
      this.pitch = Math.max(-90, Math.min(90, this.pitch + (e.clientY - last[1]) * degPerPx));
      last = [e.clientX, e.clientY];
      this.requestDraw();
      e.stopPropagation(); e.preventDefault();
    });
    const end = (e) => { last = null; this.canvas.style.cursor = "grab"; e.stopPropagation(); };
    this.canvas.addEventListener("pointerup", end);
    this.canvas.addEventListener("pointercancel", end);
    this.canvas.addEventListener("wheel", (e) => {
      this.fov = Math.max(20, Math.min(150, this.fov * Math.exp(e.deltaY * 0.001)));
      this.requestDraw();
      e.stopPropagation(); e.preventDefault();
    }, { passive: false });
  }

  async load(entry) {
    const image = new Image();
    image.src = viewUrl(entry);
    await image.decode();
    const scale = Math.min(1, MAX_SOURCE / image.naturalWidth);
    const w = Math.max(1, Math.round(image.naturalWidth * scale));
    const h = Math.max(1, Math.round(image.naturalHeight * scale));
    const work = document.createElement("canvas");
    work.width = w; work.height = h;
    const ctx = work.getContext("2d", { willReadFrequently: true });
    ctx.drawImage(image, 0, 0, w, h);
    this.source = { data: ctx.getImageData(0, 0, w, h).data, w, h };
    this.label = `${image.naturalWidth}×${image.naturalHeight}` + (scale < 1 ? ` (shown at ${w}×${h})` : "");
    this.requestDraw();
  }

  requestDraw() {
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => { this.pending = false; this.draw(); });
  }

  // Every canvas pixel's ray, turned by pitch then yaw, read from the equirectangular image (nearest pixel).
  draw() {
    const rect = this.canvas.getBoundingClientRect();
    const W = Math.max(16, Math.min(960, Math.round(rect.width || 320)));
    const H = Math.max(16, Math.min(720, Math.round(rect.height || 180)));
    if (this.canvas.width !== W || this.canvas.height !== H) { this.canvas.width = W; this.canvas.height = H; }
    if (!this.source) return;
    const ctx = this.canvas.getContext("2d");
    const out = ctx.createImageData(W, H);
    const { data, w, h } = this.source;
    const f = 0.5 * W / Math.tan(this.fov * Math.PI / 360);
    const cy = Math.cos(this.yaw * Math.PI / 180), sy = Math.sin(this.yaw * Math.PI / 180);
    const cp = Math.cos(this.pitch * Math.PI / 180), sp = Math.sin(this.pitch * Math.PI / 180);
    let o = 0;
    for (let j = 0; j < H; j++) {
      const y = j - (H - 1) / 2;
      for (let i = 0; i < W; i++) {
        const x = i - (W - 1) / 2;
        // camera frame: x right, y down, z forward; pitch about x (up = -y), then yaw about y
        const y1 = y * cp - f * sp, z1 = y * sp + f * cp;
        const x2 = x * cy + z1 * sy, z2 = -x * sy + z1 * cy;
        const lon = Math.atan2(x2, z2), lat = Math.atan2(-y1, Math.hypot(x2, z2));
        let u = Math.floor((lon / (2 * Math.PI) + 0.5) * w); u = ((u % w) + w) % w;
        let v = Math.floor((0.5 - lat / Math.PI) * h); v = v < 0 ? 0 : v >= h ? h - 1 : v;
        const s = (v * w + u) * 4;
        out.data[o] = data[s]; out.data[o + 1] = data[s + 1]; out.data[o + 2] = data[s + 2]; out.data[o + 3] = 255;
        o += 4;
      }
    }
    ctx.putImageData(out, 0, 0);
    this.status.textContent = `${this.label}   yaw ${this.yaw.toFixed(1)}°  pitch ${this.pitch.toFixed(1)}°  ` +
      `fov ${this.fov.toFixed(0)}°`;
  }

  // Copy yaw/pitch/fov into the Panorama View nodes whose panorama comes from the same output as ours.
  useThisView() {
    const graph = this.node.graph;
    const source = (n) => {
      const slot = n.inputs?.find((inp) => inp.name === "panorama");
      const link = slot && slot.link != null ? graph.links[slot.link] ?? graph.links.get?.(slot.link) : null;
      return link ? `${link.origin_id}:${link.origin_slot}` : null;
    };
    const ours = source(this.node);
    const yaw = ((this.yaw + 180) % 360 + 360) % 360 - 180;
    let count = 0;
    for (const n of graph._nodes ?? graph.nodes) {
      if (n.type !== "MVDiffusionPanoramaView" || (ours && source(n) !== ours)) continue;
      for (const [name, value] of [["yaw", yaw], ["pitch", this.pitch], ["fov", this.fov]]) {
        const widget = n.widgets?.find((wd) => wd.name === name);
        if (widget) widget.value = Math.round(value * 2) / 2;
      }
      count += 1;
    }
    this.status.textContent = count ? `copied to ${count} Panorama View node(s)` : "no Panorama View node fed by this panorama";
    graph.setDirtyCanvas?.(true, true);
  }

  toggleFullscreen() {
    if (document.fullscreenElement) document.exitFullscreen();
    else this.root.requestFullscreen?.();
    setTimeout(() => this.requestDraw(), 100);
  }
}

getApp().then((app) => app.registerExtension({
  name: "comfyui-mvdiffusion.PanoramaViewer",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== NODE) return;
    const created = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = created?.apply(this, arguments);
      this.mvdViewer = new PanoramaViewer(this);
      this.addDOMWidget("panorama_viewer", "mvdiffusion_panorama", this.mvdViewer.root, { serialize: false });
      this.setSize([Math.max(this.size[0], 420), Math.max(this.size[1], 300)]);
      return result;
    };
    const executed = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      executed?.apply(this, arguments);
      const entry = message?.mvdiffusion_panorama?.[0];
      if (entry && this.mvdViewer) this.mvdViewer.load(entry);
    };
    const resized = nodeType.prototype.onResize;
    nodeType.prototype.onResize = function () {
      resized?.apply(this, arguments);
      this.mvdViewer?.requestDraw();
    };
  },
}));

export { PanoramaViewer };
