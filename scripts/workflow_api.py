"""Workflows: UI format (what the ComfyUI frontend saves and opens) <-> API format (what ``/prompt`` runs).

* :func:`ui_to_api` converts a UI workflow to an API prompt, using the server's ``/object_info`` to map each
  node's ``widgets_values`` onto its widget inputs (in declaration order; INT inputs with
  ``control_after_generate`` carry one extra value, the control mode).
* :class:`UIGraph` builds UI workflows from node types, widget values and links, again from ``/object_info``
  (used by ``scripts/build_workflows.py`` to write ``workflows/*.json``).
"""
from __future__ import annotations

import copy

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
SKIPPED_NODES = {"Note", "MarkdownNote"}
MUTED, BYPASSED = 2, 4


def declared_inputs(info: dict) -> list[tuple[str, list]]:
    """(name, spec) of a node's inputs in declaration order: required, then optional."""
    out = []
    for section in ("required", "optional"):
        out += list((info.get("input", {}).get(section) or {}).items())
    return out


def is_widget(spec) -> bool:
    """A widget in the UI (a value in widgets_values), not a socket; forceInput makes a widget type a socket."""
    kind = spec[0]
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    return (isinstance(kind, list) or kind in WIDGET_TYPES) and not options.get("forceInput")


def has_control_widget(name: str, spec) -> bool:
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    return spec[0] == "INT" and bool(options.get("control_after_generate") or name in ("seed", "noise_seed"))


def widget_inputs(info: dict) -> list[tuple[str, list]]:
    return [(name, spec) for name, spec in declared_inputs(info) if is_widget(spec)]


def ui_to_api(workflow: dict, object_info: dict) -> dict:
    """API prompt ``{node_id: {"class_type", "inputs"}}`` of a UI workflow (muted nodes and notes dropped)."""
    nodes = {n["id"]: n for n in workflow["nodes"]}
    links = {link[0]: link for link in workflow.get("links", [])}

    def source(link_id):
        _, origin, slot = links[link_id][:3]
        node = nodes[origin]
        if node["type"] == "Reroute":
            return source(node["inputs"][0]["link"])
        return [str(origin), slot]

    prompt = {}
    for node in sorted(nodes.values(), key=lambda n: n["id"]):
        kind = node["type"]
        if kind in SKIPPED_NODES or kind == "Reroute" or node.get("mode", 0) == MUTED:
            continue
        if node.get("mode", 0) == BYPASSED:
            raise ValueError(f"node {node['id']} ({kind}) is bypassed; un-bypass or remove it before converting")
        if kind not in object_info:
            raise ValueError(f"node {node['id']}: unknown node type {kind!r} (is its custom-node pack installed?)")
        inputs = {}
        values = list(node.get("widgets_values") or [])
        cursor = 0
        for name, spec in widget_inputs(object_info[kind]):
            if cursor < len(values):
                inputs[name] = values[cursor]
            cursor += 1 + has_control_widget(name, spec)
        for socket in node.get("inputs", []):
            if socket.get("link") is not None:
                inputs[socket["name"]] = source(socket["link"])
        prompt[str(node["id"])] = {"class_type": kind, "inputs": inputs,
                                   "_meta": {"title": node.get("title") or kind}}
    return prompt


def set_inputs(prompt: dict, class_type: str, **values) -> dict:
    """A copy of an API prompt with widget values of every node of ``class_type`` replaced."""
    prompt = copy.deepcopy(prompt)
    found = False
    for node in prompt.values():
        if node["class_type"] == class_type:
            node["inputs"].update(values)
            found = True
    if not found:
        raise KeyError(f"no {class_type} node in the prompt")
    return prompt


class UIGraph:
    """A UI-format workflow under construction (LiteGraph schema version 0.4)."""

    def __init__(self, object_info: dict):
        self.info = object_info
        self.nodes: list[dict] = []
        self.links: list[list] = []

    def add(self, kind: str, pos, size=None, title: str | None = None, **inputs) -> "NodeRef":
        """Add a node; ``inputs``: widget values by name, or ``NodeRef.out(slot)`` links."""
        info = self.info[kind]
        node_id = len(self.nodes) + 1
        widgets, sockets = [], []
        for name, spec in declared_inputs(info):
            value = inputs.pop(name, None)
            link = None
            if is_widget(spec) and isinstance(value, Output):
                # a widget fed by a link: a socket that names its widget, which keeps its default value
                link, value = value, None
            if is_widget(spec):
                if value is None:
                    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
                    value = options.get("default", spec[0][0] if isinstance(spec[0], list) else None)
                widgets.append(value)
                if has_control_widget(name, spec):
                    widgets.append("fixed")
                if link is not None:
                    sockets.append(self._link(link, node_id, len(sockets), name, spec[0]))
                    sockets[-1]["widget"] = {"name": name}
            else:
                if value is None and name in (info.get("input", {}).get("required") or {}):
                    raise ValueError(f"{kind}: required input {name!r} is not connected")
                sockets.append(self._link(value, node_id, len(sockets), name, spec[0]))
        if inputs:
            raise ValueError(f"{kind} has no inputs {sorted(inputs)}")
        outputs = [{"name": name, "type": kind_, "links": [], "slot_index": i}
                   for i, (name, kind_) in enumerate(zip(info["output_name"], info["output"]))]
        rows = max(len(sockets), len(outputs)) + len(widgets)
        node = {"id": node_id, "type": kind, "pos": list(pos), "size": list(size or [320, 46 + 24 * rows]),
                "flags": {}, "order": node_id - 1, "mode": 0, "inputs": sockets, "outputs": outputs,
                "properties": {"Node name for S&R": kind}, "widgets_values": widgets}
        if title:
            node["title"] = title
        self.nodes.append(node)
        return NodeRef(node_id)

    def _link(self, value, node_id: int, slot: int, name: str, kind: str) -> dict:
        """The input socket ``slot`` of node ``node_id``, linked to ``value`` (an Output) unless it is None."""
        socket = {"name": name, "type": kind, "link": None}
        if value is not None:
            link_id = len(self.links) + 1
            self.links.append([link_id, value.node_id, value.slot, node_id, slot, kind])
            self.nodes[value.node_id - 1]["outputs"][value.slot]["links"].append(link_id)
            socket["link"] = link_id
        return socket

    def note(self, pos, text: str, size=(420, 160)) -> None:
        node_id = len(self.nodes) + 1
        self.nodes.append({"id": node_id, "type": "Note", "pos": list(pos), "size": list(size), "flags": {},
                           "order": node_id - 1, "mode": 0, "inputs": [], "outputs": [],
                           "properties": {"text": ""}, "widgets_values": [text]})

    def to_ui(self, viewport=(1920, 1080), margin=(90, 110)) -> dict:
        """The workflow, with a view (``extra.ds``) that frames every node in a ``viewport``-sized canvas."""
        x0 = min(n["pos"][0] for n in self.nodes)
        y0 = min(n["pos"][1] for n in self.nodes)
        x1 = max(n["pos"][0] + n["size"][0] for n in self.nodes)
        y1 = max(n["pos"][1] + n["size"][1] for n in self.nodes)
        scale = min(1.0, (viewport[0] - 2 * margin[0]) / (x1 - x0), (viewport[1] - 2 * margin[1]) / (y1 - y0))
        scale = round(scale, 3)
        offset = [round(margin[0] / scale - x0, 1), round(margin[1] / scale - y0, 1)]  # screen = (pos + offset) * scale
        return {"last_node_id": len(self.nodes), "last_link_id": len(self.links), "nodes": self.nodes,
                "links": self.links, "groups": [], "config": {},
                "extra": {"ds": {"scale": scale, "offset": offset}}, "version": 0.4}


class Output:
    def __init__(self, node_id: int, slot: int):
        self.node_id, self.slot = node_id, slot


class NodeRef:
    def __init__(self, node_id: int):
        self.node_id = node_id

    def out(self, slot: int = 0) -> Output:
        return Output(self.node_id, slot)
