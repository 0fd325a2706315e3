"""A fresh install gets the tested set: constraints.txt pins every dependency, transitively, at a
version pyproject.toml allows, and every installer (bootstrap.py, so CI; the Dockerfile) uses it."""
import re
from importlib import metadata
from pathlib import Path

import tomllib
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parent.parent


def pins() -> dict[str, str]:
    lines = [l.strip() for l in (REPO / "constraints.txt").read_text().splitlines()]
    entries = [l for l in lines if l and not l.startswith("#")]
    assert all(re.fullmatch(r"[A-Za-z0-9_.\-]+==[A-Za-z0-9_.+!\-]+", l) for l in entries), entries
    return {canonicalize_name(l.split("==")[0]): l.split("==")[1] for l in entries}


def project_requirements() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["test"]]


def test_every_direct_requirement_is_pinned_within_its_range():
    pinned = pins()
    for requirement in project_requirements():
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"{name} is not pinned in constraints.txt"
        assert requirement.specifier.contains(pinned[name], prereleases=True), (name, pinned[name], str(requirement))


def test_every_transitive_dependency_is_pinned():
    """Walk the installed distributions from the project's requirements: each one is pinned."""
    pinned, seen = pins(), set()
    queue = [(r, frozenset()) for r in project_requirements()]
    while queue:
        requirement, extras = queue.pop()
        environment = default_environment()
        if requirement.marker and not any(requirement.marker.evaluate({**environment, "extra": e})
                                          for e in (extras or {""})):
            continue
        name = canonicalize_name(requirement.name)
        if name in seen:
            continue
        seen.add(name)
        assert name in pinned, f"{name} (needed through the project's dependencies) is not pinned"
        for sub in metadata.requires(requirement.name) or []:
            queue.append((Requirement(sub), frozenset(requirement.extras)))
    assert len(seen) > 40


def test_installers_use_the_constraints():
    bootstrap = (REPO / "bootstrap.py").read_text()
    assert '"-c", str(CONSTRAINTS)' in bootstrap and "CONSTRAINTS.read_text()" in bootstrap  # installs, fingerprint
    docker = (REPO / "Dockerfile").read_text()
    assert "constraints.txt" in docker.split("RUN pip install")[0] and "pip install -c constraints.txt ." in docker
    assert "bootstrap.py" in (REPO / ".ci" / "run").read_text()
