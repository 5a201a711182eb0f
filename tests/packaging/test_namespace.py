"""Packaging rules: `nft` is a namespace, modalities register through entry points only."""

import ast
from importlib.metadata import entry_points
from pathlib import Path

import nft
import nft.core

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = sorted(p for p in (ROOT / "packages").iterdir() if (p / "pyproject.toml").is_file())


def test_nft_is_a_native_namespace_package():
    assert getattr(nft, "__file__", None) is None
    for package in PACKAGES:
        assert not (package / "src" / "nft" / "__init__.py").exists(), package.name


def test_every_modality_package_registers_an_entry_point():
    names = {ep.name: ep.value for ep in entry_points(group="nft.modalities")}
    assert names["synthetic"] == "nft.core.synthetic:modality"
    for package in PACKAGES:
        modality = package.name.removeprefix("nft-")
        if modality != "core":
            assert modality in names, f"{package.name} does not register modality {modality!r}"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_dependencies_point_one_way():
    modalities = [p.name.removeprefix("nft-") for p in PACKAGES if p.name != "nft-core"]
    for package in PACKAGES:
        own = package.name.removeprefix("nft-")
        for source in (package / "src").rglob("*.py"):
            for name in _imports(source):
                parts = name.split(".")
                if parts[0] == "nft" and len(parts) > 1 and parts[1] != own:
                    assert parts[1] == "core", f"{source} imports {name}: only nft.core may be imported"
                    assert own != "core" or parts[1] not in modalities
