"""The package as ``ros2 launch`` and launch_ros find it, for the tests that run the real launch tools.

With a ``colcon build`` of ``ros2_ws`` sourced (``. install/setup.bash``) the installed package is used. Otherwise
:func:`ament_prefix` lays out a minimal install prefix in a temporary folder — the ament index marker, ``share/
mbmpo_ros`` with the source tree's ``launch/``, ``config/`` and ``package.xml``, and ``lib/mbmpo_ros/<node>`` linking
to the console scripts ``pip install -e .`` made — and puts it first on ``AMENT_PREFIX_PATH``, so the launch files
under test are exactly the source tree's.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "mbmpo_ros"
EXECUTABLES = ("learner", "controller", "sim_robot")


def installed_share() -> Path | None:
    """The share directory of an installed (colcon) mbmpo_ros, or None."""
    try:
        from ament_index_python.packages import get_package_share_directory

        return Path(get_package_share_directory(PACKAGE))
    except (ImportError, LookupError, OSError, ValueError):
        return None


def ament_prefix() -> dict[str, str]:
    """Environment variables under which mbmpo_ros resolves (the installed package, else a temporary prefix); the
    variables are also set in this process (launch_testing runs the launch file here)."""
    if installed_share() is not None:
        return {}
    prefix = Path(tempfile.mkdtemp(prefix="mbmpo-ament-"))
    (prefix / "share" / "ament_index" / "resource_index" / "packages").mkdir(parents=True)
    (prefix / "share" / "ament_index" / "resource_index" / "packages" / PACKAGE).write_text("")
    share = prefix / "share" / PACKAGE
    share.mkdir()
    for name in ("config", "package.xml"):
        (share / name).symlink_to(ROOT / name)
    (share / "launch").mkdir()  # ros2 launch finds launch files by walking this folder: links to files, not to it
    for launch_file in (ROOT / "launch").glob("*.launch.py"):
        (share / "launch" / launch_file.name).symlink_to(launch_file)
    lib = prefix / "lib" / PACKAGE
    lib.mkdir(parents=True)
    scripts = Path(sys.executable).parent
    for executable in EXECUTABLES:
        found = shutil.which(executable, path=str(scripts)) or shutil.which(executable)
        if found is None:
            raise RuntimeError(f"no '{executable}' console script (pip install -e '.[ros]')")
        (lib / executable).symlink_to(found)
    variables = {"AMENT_PREFIX_PATH": os.pathsep.join(p for p in (str(prefix), os.environ.get("AMENT_PREFIX_PATH"))
                                                      if p)}
    os.environ.update(variables)
    return variables
