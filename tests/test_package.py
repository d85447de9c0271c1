"""Package exports resolve lazily: names import their module on first use; shard tools start without Lightning."""

import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # trains, launches processes or a browser: the full suite only

CHECK = """
import sys
import datamodules, instructseg
assert "instructseg.predictor" not in sys.modules and "datamodules.datamodule" not in sys.modules
datamodules.encode_rle
import datamodules.convert.runner
assert "lightning" not in sys.modules, "the shard tools must not import Lightning"
assert instructseg.InstructSegPredictor.__name__ == "InstructSegPredictor" and "instructseg.predictor" in sys.modules
assert datamodules.InstructSegDataModule.__name__ == "InstructSegDataModule" and "datamodules.datamodule" in sys.modules
"""


def test_lazy_exports_and_lightning_free_shard_tools():
    subprocess.run([sys.executable, "-c", CHECK], check=True)


@pytest.mark.parametrize("package", ["instructseg", "datamodules"])
def test_unknown_names_are_attribute_errors(package):
    with pytest.raises(AttributeError, match="no_such_name"):
        getattr(__import__(package), "no_such_name")
