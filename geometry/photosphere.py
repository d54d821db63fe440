"""Google Photo Sphere XMP (the ``GPano`` namespace) for equirectangular images, so that viewers open them in 360.

An equirectangular image of W x h pixels is a crop of a full sphere of W x W/2 pixels (2:1). A full panorama
(h = W/2) is the whole sphere; a band (h < W/2, e.g. the 8-view ring's ±45° band) is placed vertically at
``top`` pixels from the full sphere's top row (centred on the horizon by default). Fields, as Google's
Photo Sphere XMP specification names them: ProjectionType, UsePanoramaViewer, FullPanoWidthPixels,
FullPanoHeightPixels, CroppedAreaImageWidthPixels, CroppedAreaImageHeightPixels, CroppedAreaLeftPixels,
CroppedAreaTopPixels.
"""
from __future__ import annotations

__all__ = ["GPANO_NAMESPACE", "gpano_fields", "gpano_xmp"]

GPANO_NAMESPACE = "http://ns.google.com/photos/1.0/panorama/"


def gpano_fields(width: int, height: int, full_sphere: bool = True, top: int | None = None) -> dict:
    """The GPano fields of a W x h equirectangular image: ``{name: value}`` in the specification's order.

    ``full_sphere``: the image must be exactly 2:1 (ValueError otherwise). Else the image is a band of a
    W x W/2 sphere at ``top`` (default: centred on the horizon); it must fit in the sphere.
    """
    width, height = int(width), int(height)
    if width < 2 or height < 1:
        raise ValueError(f"an equirectangular image needs at least 2 x 1 pixels, got {width}x{height}")
    if width % 2:
        raise ValueError(f"an equirectangular image has an even width (a 2:1 sphere), got {width}")
    full_height = width // 2
    if full_sphere and height != full_height:
        raise ValueError(f"a full-sphere panorama is 2:1, but this image is {width}x{height} (its full sphere "
                         f"would be {width}x{full_height}); save it as a band instead")
    if height > full_height:
        raise ValueError(f"a {width}x{height} image is taller than the {width}x{full_height} sphere it belongs to")
    top = (full_height - height) // 2 if top is None else int(top)
    if not 0 <= top <= full_height - height:
        raise ValueError(f"the band's top row {top} is outside 0..{full_height - height}")
    return {"ProjectionType": "equirectangular", "UsePanoramaViewer": "True",
            "FullPanoWidthPixels": width, "FullPanoHeightPixels": full_height,
            "CroppedAreaImageWidthPixels": width, "CroppedAreaImageHeightPixels": height,
            "CroppedAreaLeftPixels": 0, "CroppedAreaTopPixels": top}


def gpano_xmp(fields: dict) -> bytes:
    """An XMP packet (UTF-8) holding ``fields`` as GPano attributes of one rdf:Description."""
    attributes = "\n".join(f'    GPano:{name}="{value}"' for name, value in fields.items())
    return ('<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
            '<x:xmpmeta xmlns:x="adobe:ns:meta/">\n'
            ' <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">\n'
            f'  <rdf:Description rdf:about="" xmlns:GPano="{GPANO_NAMESPACE}"\n'
            f'{attributes}/>\n'
            ' </rdf:RDF>\n'
            '</x:xmpmeta>\n'
            '<?xpacket end="w"?>').encode("utf-8")
