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


def test_save_panorama_through_the_server_embeds_the_prompt_and_workflow_like_save_image(comfy_server):
    import json

    from PIL import Image

    prompt = {"1": {"class_type": "EmptyImage", "inputs": {"width": 256, "height": 128, "batch_size": 1,
                                                           "color": 0x336699}},
              "2": {"class_type": "MVDiffusionSavePanorama", "inputs": {"panorama": ["1", 0], "format": "png",
                                                                        "filename_prefix": "e2e/pano360",
                                                                        "full_sphere": True, "quality": 95}}}
    workflow = {"nodes": [], "links": [], "version": 0.4}
    prompt_id = comfy_server.queue(prompt, extra_data={"extra_pnginfo": {"workflow": workflow}})
    entry = comfy_server.wait(prompt_id)
    assert entry["status"]["status_str"] == "success", entry["status"]
    (path,) = comfy_server.output_files(entry)
    with Image.open(path) as image:
        chunks = dict(image.text)
        xmp = image.getxmp()
    assert json.loads(chunks["prompt"]) == prompt and json.loads(chunks["workflow"]) == workflow
    assert xmp["xmpmeta"]["RDF"]["Description"]["ProjectionType"] == "equirectangular"
