"""The converter CLI: official checkpoint -> this pack's CAA .safetensors (no ComfyUI)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import official_layouts as layouts  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from checkpoint_files import caa_part as caa_of  # noqa: E402

from comfyui_mvdiffusion.caa import checkpoint as ck  # noqa: E402
from comfyui_mvdiffusion.caa import convert  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SMALL_WIDTHS = {"encoder": [64, 128, 256, 256], "mid": 256, "decoder": [256, 256, 128, 64]}
EXTRA = ("mv_base_model.unet.conv_in.weight", "mv_base_model.unet.conv_out.weight", "vae.encoder.conv_in.weight",
         "vae.decoder.conv_out.weight", "text_encoder.text_model.final_layer_norm.weight",
         "text_encoder.text_model.embeddings.position_ids")


def small_official(tmp_path: Path, name: str = "pano.ckpt", kind: str = "pano") -> tuple[Path, dict]:
    """A checkpoint in the official layout of ``kind``: all CAA blocks (and depth condition encoders) for a UNet
    of 64 channels, the UNet level shapes, and some UNet/VAE/text-encoder tensors that the conversion must
    leave out."""
    def select(k):
        return (k.startswith(("mv_base_model.cp_blocks_", "mv_base_model.condition_")) or k in EXTRA
                or (k.startswith("mv_base_model.unet.") and k.endswith("conv2.weight") and ".resnets." in k))
    sd = layouts.official_state_dict(kind, select=select, model_channels=64)
    return layouts.save_lightning_checkpoint(tmp_path / name, sd, kind), sd




def test_default_output_is_next_to_the_input_in_fp16_and_the_cli_prints_count_and_size(tmp_path, capsys):
    src, sd = small_official(tmp_path)
    assert convert.main([str(src)]) == 0
    out = tmp_path / "pano.caa.safetensors"
    assert out.is_file()
    printed = capsys.readouterr().out
    params = sum(v.numel() for k, v in caa_of(sd).items() if not k.endswith("freq_bands"))
    assert f"{params:,} parameters" in printed and f"{out.stat().st_size:,} bytes" in printed
    assert str(out) in printed and "fp16" in printed
    with safe_open(str(out), framework="pt") as f:
        meta, keys = f.metadata(), set(f.keys())
        dtypes = {k: f.get_tensor(k).dtype for k in keys}
    assert keys == set(caa_of(sd))  # only the CAA blocks: no UNet, VAE or text-encoder weights
    assert meta["format"] == "comfyui-mvdiffusion.caa" and meta["format_version"] == "1"
    assert meta["model_kind"] == "pano" and meta["source"] == "pano.ckpt"
    assert all(dt == (torch.float32 if k.endswith("pe.freq_bands") else torch.float16) for k, dt in dtypes.items())


def test_fp32_conversion_round_trips_exactly_and_fp16_to_the_fp16_rounding(tmp_path):
    src, sd = small_official(tmp_path)
    expected = caa_of(sd)
    for dtype, name in ((torch.float32, "fp32"), (torch.float16, "fp16"), (torch.bfloat16, "bf16")):
        out = tmp_path / f"caa_{name}.safetensors"
        assert convert.main([str(src), "-o", str(out), "--dtype", name]) == 0
        loaded, info = ck.load_caa_state_dict(out)
        assert info["widths"] == SMALL_WIDTHS and info["kind"] == "pano"
        for k, v in expected.items():
            if k.endswith("pe.freq_bands"):
                assert loaded[k].dtype == torch.float32 and torch.equal(loaded[k], v)
            else:
                assert torch.equal(loaded[k], v.to(dtype)), k
        caa, _ = ck.load_caa(out, dtype=torch.float32)
        assert caa.widths == SMALL_WIDTHS


def test_an_existing_output_is_refused_without_force_and_replaced_with_it(tmp_path, capsys):
    src, _ = small_official(tmp_path)
    out = tmp_path / "pano.caa.safetensors"
    out.write_bytes(b"keep me")
    assert convert.main([str(src)]) == 1
    err = capsys.readouterr().err
    assert str(out) in err and "--force" in err
    assert out.read_bytes() == b"keep me"
    assert convert.main([str(src), "--force"]) == 0
    assert ck.load_caa_state_dict(out)[1]["kind"] == "pano"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pano.caa.safetensors", "pano.ckpt"]  # no temp left


def test_the_input_is_never_overwritten_even_with_force(tmp_path, capsys):
    src, _ = small_official(tmp_path)
    first = tmp_path / "caa.safetensors"
    assert convert.main([str(src), "-o", str(first)]) == 0
    before = first.read_bytes()
    assert convert.main([str(first), "-o", str(first), "--force"]) == 1
    assert "refusing to overwrite the input" in capsys.readouterr().err
    assert first.read_bytes() == before


def test_converting_our_own_file_again_changes_only_the_dtype(tmp_path):
    src, sd = small_official(tmp_path)
    fp32 = tmp_path / "a.safetensors"
    assert convert.main([str(src), "-o", str(fp32), "--dtype", "fp32"]) == 0
    half = tmp_path / "b.safetensors"
    assert convert.main([str(fp32), "-o", str(half)]) == 0
    loaded, info = ck.load_caa_state_dict(half)
    assert info["source"] == "pano.ckpt" and info["dtype"] == "float16"
    assert all(torch.equal(loaded[k], v if k.endswith("freq_bands") else v.half()) for k, v in caa_of(sd).items())


def test_bad_input_fails_with_the_files_name_and_writes_nothing(tmp_path, capsys):
    bad = tmp_path / "pano.ckpt"
    bad.write_text('{"not": "a checkpoint"}')
    assert convert.main([str(bad)]) == 1
    err = capsys.readouterr().err
    assert str(bad) in err and "JSON" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pano.ckpt"]
    sd2 = tmp_path / "sd2.ckpt"
    torch.save({"state_dict": {"model.diffusion_model.out.2.weight": torch.zeros(4, 320, 3, 3)}}, sd2)
    assert convert.main([str(sd2)]) == 1
    assert "no CAA keys" in capsys.readouterr().err
    assert not (tmp_path / "sd2.caa.safetensors").exists()


def test_the_output_must_be_safetensors(tmp_path, capsys):
    src, _ = small_official(tmp_path)
    assert convert.main([str(src), "-o", str(tmp_path / "x.ckpt")]) == 1
    assert ".safetensors" in capsys.readouterr().err


def readme_commands(prefix: str) -> list[str]:
    """The lines of the README's code blocks that start with ``prefix`` (trailing ``# comments`` removed)."""
    lines, inside = [], False
    for line in (ROOT / "README.md").read_text().splitlines():
        if line.startswith("```"):
            inside = not inside
        elif inside and line.startswith(prefix):
            lines.append(line.split("  #")[0].strip())
    return lines


def run_shell(command: str, cwd: Path, python: str = "python") -> subprocess.CompletedProcess:
    """``command`` as a user types it, with ``python`` meaning this interpreter (the one that runs ComfyUI)."""
    assert command.startswith(python + " "), command
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "COMFYUI_PATH")}
    return subprocess.run(sys.executable + command[len(python):], shell=True, cwd=cwd, env=env,
                          capture_output=True, text=True)


def check_converted(out: Path, sd: dict) -> None:
    loaded, info = ck.load_caa_state_dict(out)
    assert info["format"] == ck.FORMAT
    assert all(torch.equal(loaded[k], v if k.endswith("freq_bands") else v.half()) for k, v in caa_of(sd).items())


def test_the_converter_command_the_readme_prints_works_from_a_plain_clone_in_comfyui(tmp_path):
    """In a ComfyUI folder whose custom_nodes/comfyui-mvdiffusion is a plain clone (no pip install)."""
    commands = readme_commands("python custom_nodes/comfyui-mvdiffusion/scripts/convert.py")
    assert commands, "the README shows no converter command"
    comfyui = tmp_path / "ComfyUI"
    (comfyui / "custom_nodes").mkdir(parents=True)
    (comfyui / "custom_nodes" / "comfyui-mvdiffusion").symlink_to(ROOT, target_is_directory=True)
    (comfyui / "models" / "mvdiffusion").mkdir(parents=True)
    src, sd = small_official(comfyui / "models" / "mvdiffusion")
    for command in commands:
        run = run_shell(command, comfyui)
        assert run.returncode == 0, (command, run.stderr)
    check_converted(comfyui / "models" / "mvdiffusion" / "pano.caa.safetensors", sd)


def test_the_converter_command_the_demo_prints_works_in_this_repository(tmp_path):
    sys.path.insert(0, str(ROOT / "scripts"))
    import demo

    command = demo.CONVERT_COMMAND
    assert command in demo.missing_weights_message()
    repo = tmp_path / "clone"
    repo.mkdir()
    for name in ("__init__.py", "caa", "geometry", "scripts", "nodes"):
        (repo / name).symlink_to(ROOT / name)
    (repo / ".venv" / "bin").mkdir(parents=True)
    (repo / ".venv" / "bin" / "python").symlink_to(sys.executable)
    (repo / "models" / "mvdiffusion").mkdir(parents=True)
    src, sd = small_official(repo / "models" / "mvdiffusion")
    run = run_shell(command, repo, python=".venv/bin/python")
    assert run.returncode == 0, run.stderr
    check_converted(repo / "models" / "mvdiffusion" / "pano.caa.safetensors", sd)


def test_pip_installing_the_pack_gives_the_mvdiffusion_convert_command(tmp_path):
    import shutil

    source = tmp_path / "source"  # a copy: building writes build/ and *.egg-info next to pyproject.toml
    source.mkdir()
    import tomllib

    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    folders = sorted({name.split(".")[1] for name in packages if "." in name})  # the pack's top-level packages
    for name in ("pyproject.toml", "README.md", "LICENSE", "__init__.py", *folders):
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy
        copy(ROOT / name, source / name, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                            if (ROOT / name).is_dir() else {}))
    site = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                              "--disable-pip-version-check", "--target", str(site), str(source)],
                             capture_output=True, text=True, cwd=tmp_path)
    assert install.returncode == 0, install.stderr
    src, sd = small_official(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(site))
    run = subprocess.run([str(site / "bin" / "mvdiffusion-convert"), str(src)], cwd=tmp_path, env=env,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "wrote" in run.stdout
    check_converted(tmp_path / "pano.caa.safetensors", sd)


@pytest.mark.parametrize("kind", ["pano", "pano_outpaint", "depth"])
def test_whole_keeps_every_tensor_and_dtype_and_classifies_like_the_ckpt(tmp_path, capsys, kind):
    src, sd = small_official(tmp_path, f"{kind}.ckpt", kind)
    assert convert.main([str(src), "--whole"]) == 0
    out = tmp_path / f"{kind}.safetensors"
    assert str(out) in capsys.readouterr().out
    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
        stored = {k: f.get_tensor(k) for k in f.keys()}
    assert meta["format"] == ck.WHOLE_FORMAT and meta["model_kind"] == kind and meta["source"] == f"{kind}.ckpt"
    assert set(stored) == set(sd)  # everything, Lightning bookkeeping aside
    for k, v in sd.items():
        assert stored[k].dtype == v.dtype and torch.equal(stored[k], v), k
    whole = ck.read_checkpoint(out)
    assert ck.classify(whole.state_dict, whole.metadata) == ck.classify(sd)
    caa, info = ck.load_caa_state_dict(out)
    assert info["format"] == ck.WHOLE_FORMAT and info["source"] == f"{kind}.ckpt" and info["kind"] == kind
    assert all(torch.equal(caa[k], v) for k, v in caa_of(sd).items())


def test_whole_converts_the_single_view_depth_model_which_has_no_caa_blocks(tmp_path, capsys):
    src, sd = small_official(tmp_path, "depth_single_view.ckpt", "depth_single_view")
    assert convert.main([str(src), "--whole"]) == 0
    out = tmp_path / "depth_single_view.safetensors"
    assert "depth_single_view whole checkpoint (UNet, VAE, text encoder) with no CAA blocks" in capsys.readouterr().out
    whole = ck.read_checkpoint(out)
    assert whole.metadata["model_kind"] == "depth_single_view" and whole.metadata["format"] == ck.WHOLE_FORMAT
    assert set(whole.state_dict) == set(sd) and all(torch.equal(whole.state_dict[k], v) for k, v in sd.items())
    assert ck.classify(whole.state_dict, whole.metadata).kind == "depth_single_view"
    assert convert.main([str(src)]) == 1  # without --whole: nothing to extract
    err = capsys.readouterr().err
    assert str(src) in err and "no CAA keys" in err and "Load MVDiffusion Checkpoint" in err


def test_whole_with_a_dtype_rounds_the_weights_but_never_the_frequencies(tmp_path):
    src, sd = small_official(tmp_path)
    out = convert.convert(src, tmp_path / "half.safetensors", "fp16", whole=True).output
    stored = ck.read_checkpoint(out).state_dict
    for k, v in sd.items():
        expected = v if k.endswith("pe.freq_bands") or not v.is_floating_point() else v.half()
        assert stored[k].dtype == expected.dtype and torch.equal(stored[k], expected), k


def test_whole_refuses_what_is_not_a_complete_panorama_checkpoint_and_writes_nothing(tmp_path, capsys):
    caa_only = layouts.save_lightning_checkpoint(
        tmp_path / "caa.ckpt", layouts.official_state_dict("pano", model_channels=64,
                                                      select=lambda k: k.startswith("mv_base_model.cp_blocks_")),
        "pano")
    assert convert.main([str(caa_only), "--whole"]) == 1
    assert "lacks the unet, vae, text_encoder" in capsys.readouterr().err
    depth = layouts.save_lightning_checkpoint(
        tmp_path / "depth_gen.ckpt", layouts.official_state_dict("depth", model_channels=64,
                                                            select=lambda k: "cp_blocks_" in k), "depth")
    assert convert.main([str(depth), "--whole"]) == 1
    err = capsys.readouterr().err
    assert str(depth) in err and "lacks the unet, vae, text_encoder" in err
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".ckpt", ".ckpt"]


def test_a_disk_too_full_for_the_output_is_reported_before_writing_and_leaves_nothing(tmp_path, capsys,
                                                                                      monkeypatch):
    import shutil
    from collections import namedtuple

    src, _ = small_official(tmp_path)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda folder: usage(10**9, 10**9 - 1000, 1000))
    assert convert.main([str(src)]) == 1
    err = capsys.readouterr().err
    assert "not enough free space in" in err and str(tmp_path) in err and "0.00 GB are free" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pano.ckpt"]


@pytest.mark.parametrize("kind", ["pano_outpaint", "depth"])
def test_the_caa_weights_of_the_other_official_models_convert_and_load_as_their_kind(tmp_path, capsys, kind):
    src, sd = small_official(tmp_path, f"{kind}.ckpt", kind=kind)
    assert convert.main([str(src)]) == 0
    out = tmp_path / f"{kind}.caa.safetensors"
    with safe_open(str(out), framework="pt") as f:
        assert f.metadata()["model_kind"] == kind and set(f.keys()) == set(caa_of(sd))
    loaded, info = ck.load_caa_state_dict(out)
    assert info["kind"] == kind and set(loaded) == set(caa_of(sd))
    assert any(k.startswith("condition_") for k in loaded) == (kind == "depth")
