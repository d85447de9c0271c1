"""Package exports resolve lazily: names import their module on first use; unknown names are AttributeErrors."""

import subprocess
import sys

import pytest


@pytest.mark.parametrize("package, name, module", [
    ("instructseg", "InstructSegPredictor", "instructseg.predictor"),
    ("datamodules", "InstructSegDataModule", "datamodules.datamodule"),
])
def test_lazy_exports(package, name, module):
    code = (
        f"import sys, {package}; assert {module!r} not in sys.modules; "
        f"obj = {package}.{name}; assert {module!r} in sys.modules and obj.__name__ == {name!r}"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    with pytest.raises(AttributeError, match="no_such_name"):
        getattr(__import__(package), "no_such_name")


def test_shard_tools_do_not_import_lightning():
    code = "import sys, datamodules; datamodules.encode_rle; import datamodules.convert.runner; " \
           "assert 'lightning' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
