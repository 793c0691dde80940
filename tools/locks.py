"""Make or check the dependency locks: requirements.txt from requirements.in (runtime) and
requirements-dev.txt from requirements-dev.in (runtime + tests), every direct and indirect
dependency pinned to one version with pip-compile (pip-tools).

    python tools/locks.py            refresh the locks after editing a .in file (existing pins are kept;
                                     add --upgrade to move every pin to the newest allowed version)
    python tools/locks.py --check    exit 1 when a lock is out of date with its .in file (CI runs this)

torch is written as `torch==2.13.0`: pip-compile pins the build it resolved (`2.13.0+cpu` where the CPU
wheel is what pip finds), but a local label like `+cpu` is on no public index, and `==2.13.0` takes
the CPU wheel where it is found and the public one elsewhere.
"""

import argparse
import difflib
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCKS = (("requirements.in", "requirements.txt"), ("requirements-dev.in", "requirements-dev.txt"))
COMPILE = ["--quiet", "--no-emit-index-url", "--no-emit-find-links", "--strip-extras", "--allow-unsafe",
           "--no-header", "--annotation-style=line"]
LOCAL_LABEL = re.compile(r"^([A-Za-z0-9_.\-]+==[^+\s]+)\+[A-Za-z0-9.]+")


def normalized(text):
    """The lock as committed: local version labels dropped (torch==2.13.0+cpu -> torch==2.13.0)."""
    lines = [LOCAL_LABEL.sub(r"\1", line) for line in text.splitlines()]
    return "# Made by `python tools/locks.py` from the .in file of the same name; do not edit.\n" + \
        "\n".join(lines).strip() + "\n"


def compile_locks(work, upgrade=False):
    """Run pip-compile for each lock inside `work` (a copy of the .in files and current locks, so pins
    are kept unless `upgrade`), in order: the dev lock is constrained by the runtime lock."""
    for source, lock in LOCKS:
        cmd = [sys.executable, "-m", "piptools", "compile", *COMPILE, "--output-file", lock, source]
        if upgrade:
            cmd.append("--upgrade")
        proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True)
        if proc.returncode != 0:
            errors = [line for line in proc.stderr.splitlines() if "is ignored" not in line]
            sys.exit(f"pip-compile {source} failed:\n" + "\n".join(errors[-20:]))
        (work / lock).write_text(normalized((work / lock).read_text()))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 when a lock is out of date")
    parser.add_argument("--upgrade", action="store_true", help="move every pin to the newest allowed version")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for source, lock in LOCKS:
            shutil.copy(ROOT / source, work / source)
            if (ROOT / lock).exists():
                shutil.copy(ROOT / lock, work / lock)
        compile_locks(work, upgrade=args.upgrade)
        stale = []
        for _, lock in LOCKS:
            new, old = (work / lock).read_text(), (ROOT / lock).read_text() if (ROOT / lock).exists() else ""
            if new == old:
                continue
            stale.append(lock)
            if args.check:
                sys.stdout.writelines(difflib.unified_diff(old.splitlines(True), new.splitlines(True),
                                                           f"{lock} (committed)", f"{lock} (from its .in)"))
            else:
                shutil.copy(work / lock, ROOT / lock)
    if args.check and stale:
        print(f"out of date: {', '.join(stale)}; run `python tools/locks.py` and commit the locks", file=sys.stderr)
        return 1
    print(("up to date: " if args.check or not stale else "updated: ") +
          ", ".join(stale or [lock for _, lock in LOCKS]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
