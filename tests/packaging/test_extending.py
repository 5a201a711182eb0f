"""A new task is one new package: nothing else changes, the core finds it, and the template works.

* The source scan fails if any code outside ``nft-segmentation`` names it (the core and the
  other packages reach it only through the ``nft.modalities`` entry point) or if the Makefile
  would need an edit to install and test it.
* The isolated-environment tests install packages into a fresh virtual environment that sees
  none of the repository's other ``nft-*`` packages: a venv without pip, whose only view of the
  shared third-party libraries (torch, torchvision, numpy, …) is a ``.pth`` file pointing at a
  folder of symlinks to them, with every ``nft`` distribution left out. Packages are built and
  installed by pip from their own ``pyproject.toml`` (non-editable, so the wheels' contents are
  what runs), offline: ``--no-index --no-build-isolation`` with the build backend taken from
  the shared libraries (it is in nft-segmentation's ``test`` extra).
* One environment gets only ``nft-core`` + ``nft-segmentation`` and runs ``nft attack`` →
  ``nft purify`` there; another gets ``nft-core`` + a package freshly generated from
  ``templates/nft-task`` and runs the generated conformance tests.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import subprocess
import sys
import sysconfig
from importlib.metadata import entry_points
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NEW = "segmentation"
NEW_PACKAGE = ROOT / "packages" / f"nft-{NEW}"
NAMES = (f"nft.{NEW}", f"nft-{NEW}", f"nft/{NEW}", f"nft_{NEW}")


# ---- nothing else had to change ------------------------------------------------------------
def _code_files_outside_the_new_package() -> list[Path]:
    """Code that would have to change if the new package were not self-contained."""
    own_tests = {ROOT / "tests" / NEW, ROOT / "tests" / "packaging"}
    files = []
    for package in (ROOT / "packages").iterdir():
        if package != NEW_PACKAGE and package.is_dir():
            files += [p for p in package.rglob("*") if p.suffix in (".py", ".toml", ".cfg", ".txt")
                      and "__pycache__" not in p.parts and p.is_file()]
    files += [p for p in (ROOT / "tests").rglob("*.py") if not any(d in p.parents for d in own_tests)]
    files += [p for p in (ROOT / "tests" / "packaging").glob("*.py")
              if not p.name.startswith(("test_extending", "test_template"))]
    files += [ROOT / "Makefile", ROOT / "pyproject.toml", *(ROOT / ".ci").glob("*")]
    return [p for p in files if p.is_file()]


def _names_the_new_package(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8", errors="replace")
    found = [name for name in NAMES if name in text]
    if path.suffix == ".py":
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Import):
                found += [a.name for a in node.names if a.name.startswith(f"nft.{NEW}")]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(f"nft.{NEW}"):
                found.append(node.module)
    return found


def test_no_code_outside_the_new_package_names_it():
    files = _code_files_outside_the_new_package()
    assert any("nft-core" in p.parts for p in files) and ROOT / "Makefile" in files
    offenders = {str(p.relative_to(ROOT)): names for p in files if (names := _names_the_new_package(p))}
    assert not offenders, f"code outside nft-{NEW} refers to it by name: {offenders}"


def test_ci_installs_and_tests_every_package_without_an_edit():
    makefile = (ROOT / "Makefile").read_text()
    assert "$(wildcard packages/nft-*)" in makefile and "[test]" in makefile
    assert NEW not in makefile
    root_config = (ROOT / "pyproject.toml").read_text()
    assert 'testpaths = ["tests"]' in root_config


def test_the_core_discovers_the_new_package_through_its_entry_point():
    from nft.core import available_modalities, load_modality

    found = {ep.name: ep.value for ep in entry_points(group="nft.modalities")}
    assert found[NEW] == f"nft.{NEW}:modality"
    assert NEW in available_modalities()
    modality = load_modality(NEW)
    assert modality.name == NEW and modality.primary_metric == "miou"
    assert {"hidden-seg", "badnets-seg"} <= set(modality.attacks.names())
    assert {"canvas-seg", "voc-seg"} <= set(modality.datasets.names())


# ---- isolated environments -----------------------------------------------------------------
def _is_nft(entry: Path) -> bool:
    """Anything in the shared site-packages that belongs to an nft distribution."""
    name = entry.name.lower()
    if name == "nft" or name.startswith(("nft_", "nft-", "_editable_impl_nft", "__editable__")):
        return True
    if name.endswith(".pth"):
        return True  # editable finders and path hooks; the new env gets only our own .pth
    eps = entry / "entry_points.txt"
    return name.endswith(".dist-info") and eps.is_file() and "[nft." in eps.read_text()


def _fresh_env(root: Path, packages: list[Path]) -> Path:
    """A venv that sees the shared third-party libraries and, of nft, only ``packages``."""
    assert importlib.util.find_spec("hatchling") is not None, (
        "the build backend hatchling is missing; install the test extra: "
        "pip install -e packages/nft-segmentation[test]")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    shared = root / "shared-libs"
    shared.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not _is_nft(entry):
            (shared / entry.name).symlink_to(entry)
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "shared_libs.pth").write_text(f"{shared}\n")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
         "--no-index", "--no-build-isolation", "--disable-pip-version-check", *map(str, packages)],
        capture_output=True, text=True, env=_env(root))
    assert done.returncode == 0, done.stdout + done.stderr
    return venv


def _env(root: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(PYTHONNOUSERSITE="1", PIP_NO_CACHE_DIR="1", MPLBACKEND="Agg", OMP_NUM_THREADS="2",
               TMPDIR=str(root))
    return env


def _run(venv: Path, *args: str, cwd: Path) -> str:
    done = subprocess.run([str(venv / "bin" / args[0]), *args[1:]], capture_output=True, text=True,
                          cwd=cwd, env=_env(cwd))
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


QUICK = ["--train-limit", "1200", "--test-limit", "300", "--holdout", "200", "--epochs", "6",
         "--model-arg", "width=8", "--no-progress"]


@pytest.mark.slow
@pytest.mark.integration
def test_core_and_segmentation_alone_run_the_whole_path(tmp_path):
    venv = _fresh_env(tmp_path, [ROOT / "packages" / "nft-core", NEW_PACKAGE])
    where = _run(venv, "python", "-c", (
        "import importlib.metadata as m, nft.core, nft.segmentation as s; "
        "print(s.__file__); print(sorted(d.metadata['Name'] for d in m.distributions() "
        "if d.metadata['Name'].startswith('nft')))"), cwd=tmp_path).splitlines()
    assert where[0].startswith(str(venv)), "nft.segmentation was not imported from the fresh env"
    assert where[1] == "['nft-core', 'nft-segmentation']"
    listing = _run(venv, "nft", "list", cwd=tmp_path)
    assert "segmentation:" in listing and "hidden-seg" in listing and "canvas-seg" in listing
    assert "vision:" not in listing and "detection:" not in listing
    _run(venv, "nft", "attack", "--modality", NEW, "--out", "attack", *QUICK, cwd=tmp_path)
    attack = json.loads((tmp_path / "attack" / "report.json").read_text())
    assert set(attack) >= {"miou", "asr", "ra"} and attack["asr"] >= 0.6
    _run(venv, "nft", "purify", "--run", "attack", "--out", "purified", "--clean-per-class", "5",
         "--steps", "60", "--set", "batch_size=32", "--no-progress", cwd=tmp_path)
    report = json.loads((tmp_path / "purified" / "report.json").read_text())
    assert set(report["before"]) == set(report["after"]) == {"miou", "asr", "ra"}
    assert report["before"] == pytest.approx({k: attack[k] for k in ("miou", "asr", "ra")})
    assert report["after"]["asr"] < report["before"]["asr"]
    assert {p.name for p in (tmp_path / "purified").iterdir()} >= {
        "config.json", "model.safetensors", "masks.safetensors", "report.json", "report.md"}
    assert "MIOU" in (tmp_path / "purified" / "report.md").read_text()


@pytest.mark.slow
@pytest.mark.integration
def test_a_package_generated_from_the_template_passes_the_conformance_suites(tmp_path):
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from new_task import generate
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    package, tests = generate("audio", tmp_path)
    assert (package / "src" / "nft" / "audio" / "modality.py").is_file()
    assert not (package / "src" / "nft" / "__init__.py").exists()
    assert 'audio = "nft.audio:modality"' in (package / "pyproject.toml").read_text()
    assert "yourtask" not in "".join(p.read_text() for p in package.rglob("*.py"))
    venv = _fresh_env(tmp_path, [ROOT / "packages" / "nft-core", package])
    out = _run(venv, "python", "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path),
               str(tests), cwd=tmp_path)
    summary = out.strip().splitlines()[-1]
    assert "failed" not in summary and "skipped" not in summary and "error" not in summary, out
    assert int(summary.split(" passed")[0].split()[-1]) >= 13, out  # 7 masking + 4 mixing + 2
    # The generated tests are the contract suites plus the attack -> purify path.
    assert "MaskingContract" in (tests / "test_audio.py").read_text()
    assert "AugmentationContract" in (tests / "test_audio.py").read_text()
