"""The pack inside a real ComfyUI server."""
from __future__ import annotations

import pytest

pytestmark = [pytest.mark.host, pytest.mark.server]


def declared(schema):
    inputs = {i.id: i.get_io_type() for i in schema.inputs}
    outputs = [o.get_io_type() for o in schema.outputs]
    return inputs, outputs


def test_every_node_of_the_pack_is_in_object_info_with_its_declared_inputs_and_outputs(comfy, comfy_server):
    info = comfy_server.object_info()
    pack_nodes = comfy.module("nodes").NODES
    assert len(pack_nodes) >= 9
    for node in pack_nodes:
        schema = node.define_schema()
        assert schema.node_id in info, f"{schema.node_id} missing from /object_info"
        entry = info[schema.node_id]
        inputs, outputs = declared(schema)
        served = {**entry["input"].get("required", {}), **entry["input"].get("optional", {})}
        assert set(served) == set(inputs), schema.node_id
        for name, kind in inputs.items():
            spec = served[name]
            assert (spec[0] == kind) or (kind == "COMBO" and isinstance(spec[0], list)), (schema.node_id, name, spec)
            assert spec[1].get("tooltip") if len(spec) > 1 else False, f"{schema.node_id}.{name} has no tooltip"
        assert entry["output"] == outputs, schema.node_id
        assert entry["category"] == "MVDiffusion"
        assert entry["display_name"] and entry["description"]
