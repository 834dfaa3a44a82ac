"""The repository root is an ament_python package: colcon builds it and installs what launch files name."""

import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_package_xml_names_real_dependencies() -> None:
    tree = ET.parse(ROOT / "package.xml")
    assert tree.getroot().get("format") == "3"
    assert tree.findtext("name") == "mbmpo_ros"
    deps = {e.text for e in tree.getroot() if e.tag.endswith("depend")}
    assert {"rclpy", "std_msgs", "sensor_msgs", "diagnostic_msgs", "std_srvs", "lifecycle_msgs", "python3-numpy",
            "python3-yaml"} <= deps
    assert tree.findtext("export/build_type") == "ament_python"


def test_ros2_ws_links_to_the_root() -> None:
    link = ROOT / "ros2_ws" / "src" / "mbmpo_ros"
    assert link.is_symlink() and not Path(link.readlink()).is_absolute()
    assert link.resolve() == ROOT


@pytest.mark.skipif(shutil.which("colcon") is None, reason="colcon is not installed (pip install -e '.[test]')")
def test_colcon_build(tmp_path: Path) -> None:
    ws = ROOT / "ros2_ws"
    result = subprocess.run(
        ["colcon", "--log-base", str(tmp_path / "log"), "build", "--base-paths", str(ws / "src"),
         "--build-base", str(tmp_path / "build"), "--install-base", str(tmp_path / "install")],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    share = tmp_path / "install" / "mbmpo_ros" / "share"
    assert (share / "mbmpo_ros" / "package.xml").is_file()
    assert (share / "mbmpo_ros" / "config" / "default.yaml").is_file()
    assert (share / "ament_index" / "resource_index" / "packages" / "mbmpo_ros").is_file()
    site = tmp_path / "install" / "mbmpo_ros" / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    for module in ("mbmpo_core", "sim", "mbmpo_ros"):
        assert (site / "site-packages" / module / "__init__.py").is_file(), module
