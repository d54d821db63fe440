"""The main job's choices that need no server: which workflow and weights, and what it says when they are missing."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import demo  # noqa: E402


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """The demo with its models/ and output/ folders in tmp_path (never this repository's)."""
    monkeypatch.setattr(demo, "MODELS", tmp_path / "models")
    monkeypatch.setattr(demo, "OUTPUT", tmp_path / "output")
    monkeypatch.delenv("DEMO_RANDOM_WEIGHTS", raising=False)
    return tmp_path


def test_the_image_demo_without_weights_says_what_to_download_and_starts_nothing(repo, monkeypatch, capsys):
    monkeypatch.setenv("DEMO_WORKFLOW", "image_to_panorama")
    assert demo.main([]) == 2
    err = capsys.readouterr().err
    assert f"{repo / 'models' / 'mvdiffusion' / 'pano_outpaint.ckpt'} does not exist" in err
    assert demo.OUTPAINT_DROPBOX in err
    assert "DEMO_WORKFLOW=image_to_panorama DEMO_RANDOM_WEIGHTS=1 make demo" in err


def test_an_unknown_demo_workflow_is_refused_with_the_workflows_there_are(repo, monkeypatch, capsys):
    monkeypatch.setenv("DEMO_WORKFLOW", "text_to_video")
    assert demo.main([]) == 2
    err = capsys.readouterr().err
    assert "no workflow" in err
    assert "image_to_panorama, text_to_full_panorama, text_to_panorama, text_to_panorama_sd2)" in err


def test_the_scene_texturing_workflow_is_not_a_demo_and_the_demo_says_where_it_runs(repo, monkeypatch, capsys):
    monkeypatch.setenv("DEMO_WORKFLOW", "scene_texturing")
    assert demo.main([]) == 2
    assert "textures a depth scan of yours" in capsys.readouterr().err


def test_the_full_panorama_demo_names_each_missing_checkpoint_in_turn(repo, monkeypatch, capsys):
    monkeypatch.setenv("DEMO_WORKFLOW", "text_to_full_panorama")
    assert demo.main([]) == 2
    err = capsys.readouterr().err
    assert f"{repo / 'models' / 'mvdiffusion' / 'pano.ckpt'} does not exist" in err
    assert "DEMO_WORKFLOW=text_to_full_panorama DEMO_RANDOM_WEIGHTS=1 make demo" in err
    (repo / "models" / "mvdiffusion" / "pano.ckpt").write_bytes(b"")  # the first one there, the second missing
    assert demo.main([]) == 2
    err = capsys.readouterr().err
    assert f"{repo / 'models' / 'mvdiffusion' / 'pano_outpaint.ckpt'} does not exist" in err
    assert demo.OUTPAINT_DROPBOX in err
