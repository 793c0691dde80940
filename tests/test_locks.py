"""The dependency locks: every package pinned exactly, every direct requirement of a .in file pinned in
its lock at a version it allows, and the dev lock on the runtime lock's versions. (The full check,
pip-compile run again and compared, is `python tools/locks.py --check` in .ci/run: it needs the index.)"""

from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def pins(lock):
    out = {}
    for line in (ROOT / lock).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        specs = list(req.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", f"{lock}: {line} is not an exact pin"
        out[canonicalize_name(req.name)] = Version(specs[0].version)
    return out


def direct(source):
    reqs = []
    for line in (ROOT / source).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("-r "):
            reqs += direct(line[3:].strip())
        elif not line.startswith("-"):
            reqs.append(Requirement(line))
    return reqs


@pytest.mark.parametrize("source,lock", [("requirements.in", "requirements.txt"),
                                         ("requirements-dev.in", "requirements-dev.txt")])
def test_every_direct_requirement_is_pinned_at_an_allowed_version(source, lock):
    pinned = pins(lock)
    for req in direct(source):
        name = canonicalize_name(req.name)
        assert name in pinned, f"{lock} lacks {req.name} of {source}: run `python tools/locks.py`"
        assert req.specifier.contains(pinned[name], prereleases=True), \
            f"{lock} pins {req.name}=={pinned[name]}, outside {req} of {source}: run `python tools/locks.py`"


def test_the_dev_lock_holds_the_runtime_lock_at_its_versions():
    runtime, dev = pins("requirements.txt"), pins("requirements-dev.txt")
    assert {name: dev.get(name) for name in runtime} == runtime


def test_torch_is_the_pinned_release_without_a_local_label():
    assert str(pins("requirements.txt")["torch"]) == "2.13.0"
