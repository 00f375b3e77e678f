"""Maps the top-level folders onto the single ``diffalign`` import namespace.

``diffalign/`` -> ``diffalign``, ``pipelines/`` -> ``diffalign.pipelines`` and so on; every
sub-folder with an ``__init__.py`` becomes a subpackage, so new modules need no edit here.
"""
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).parent
FOLDERS = {
    "diffalign": "diffalign",
    "diffalign.pipelines": "pipelines",
    "diffalign.scorers": "scorers",
    "diffalign.training": "training",
    "diffalign.eval": "eval",
    "diffalign.assets": "assets",
}


def _packages() -> tuple[list[str], dict[str, str]]:
    packages, package_dir = [], {}
    for name, folder in FOLDERS.items():
        for init in sorted((ROOT / folder).rglob("__init__.py")):
            rel = init.parent.relative_to(ROOT / folder)
            sub = ".".join((name, *rel.parts)) if rel.parts else name
            packages.append(sub)
            package_dir[sub] = str(Path(folder, *rel.parts).as_posix())
    return packages, package_dir


packages, package_dir = _packages()
setup(
    packages=packages,
    package_dir=package_dir,
    package_data={
        "diffalign.assets": ["**/*"],
        "diffalign.training": ["recipes/*.toml"],
    },
    include_package_data=True,
)
