"""The house rules a reviewer would check by hand, checked on every run: small files, one
settings class, no environment reads outside it, no backend-kind tests in the core, and a README
Layout section that names the folders as they are."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("orchestrator", "experts", "skills")
SETTINGS = ROOT / "orchestrator" / "settings.py"


def sources(*tops: str) -> list[Path]:
    return sorted(p for top in tops for p in (ROOT / top).rglob("*.py"))


def test_no_file_is_over_400_lines() -> None:
    long = {str(p.relative_to(ROOT)): n for p in sources(*PACKAGES, "bench", "tests")
            if (n := len(p.read_text().splitlines())) > 400}
    assert long == {}


def test_one_settings_class_and_no_environment_reads_outside_it() -> None:
    classes = [p for p in sources(*PACKAGES, "bench") if re.search(r"class \w+\(BaseSettings\)", p.read_text())]
    assert classes == [SETTINGS]
    reads = re.compile(r"os\.environ\.get|os\.getenv|os\.environ\.setdefault|dict\(os\.environ\)|"
                       r"os\.environ\[[^\]]+\](?!\s*=[^=])|in os\.environ")
    found = [f"{p.relative_to(ROOT)}:{i}" for p in sources(*PACKAGES, "bench") if p != SETTINGS
             for i, line in enumerate(p.read_text().splitlines(), 1) if reads.search(line)]
    assert found == []


def test_the_core_tests_no_backend_kind_but_the_pool_loader() -> None:
    """What a backend implies is read from its traits (experts/traits.py), not from its kind."""
    found = {str(p.relative_to(ROOT)) for p in sources("orchestrator") if '"replay"' in p.read_text()}
    assert found == {"orchestrator/pools/loader.py"}


def test_the_readme_layout_names_every_package_and_only_what_exists() -> None:
    readme = (ROOT / "README.md").read_text()
    layout = readme[readme.index("## Layout"):]
    named = set(re.findall(r"`((?:orchestrator|experts|skills|bench)/[\w/.]*)`", layout))
    assert named and all((ROOT / n).exists() for n in named), sorted(n for n in named if not (ROOT / n).exists())
    packages = {f"orchestrator/{p.name}/" for p in (ROOT / "orchestrator").iterdir() if (p / "__init__.py").exists()}
    assert packages <= named, packages - named
