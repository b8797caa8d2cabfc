import subprocess
import sys

from conftest import REPO

HUB_SCRIPT = f"""
import importlib.util
spec = importlib.util.spec_from_file_location("hub_conf", {str(REPO / 'mindspore_hub_conf.py')!r})
hub = importlib.util.module_from_spec(spec)
spec.loader.exec_module(hub)
net = hub.create_network("ghostnet")
print("classes", net.num_classes, "width", net.width)
net = hub.create_network("ghostnet", num_classes=10, width=0.5)
print("classes", net.num_classes, "width", net.width)
try:
    hub.create_network("resnet50")
except ValueError as err:
    print("error", err)
"""


def test_hub_entry_works_from_another_directory(tmp_path):
    result = subprocess.run([sys.executable, "-c", HUB_SCRIPT], cwd=tmp_path,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "classes 37 width 1.0" in lines
    assert "classes 10 width 0.5" in lines
    assert any(line.startswith("error unknown network 'resnet50'; known: ghostnet, ghostnet_int8") for line in lines)
