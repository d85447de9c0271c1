"""Import every module of both packages (CI): a module that fails to import fails the build.

``instructseg.demo`` needs the optional ``demo`` extra (gradio); it is imported when gradio is installed.
"""

import importlib
import importlib.util
import pkgutil
import sys

OPTIONAL = {"instructseg.demo": "gradio"}


def main() -> int:
    failed = []
    count = 0
    for package in ("instructseg", "datamodules"):
        root = importlib.import_module(package)
        for info in pkgutil.walk_packages(root.__path__, prefix=f"{package}."):
            needs = OPTIONAL.get(info.name)
            if needs and importlib.util.find_spec(needs) is None:
                continue
            try:
                importlib.import_module(info.name)
                count += 1
            except Exception as err:  # noqa: BLE001 - report every failing module
                failed.append(f"{info.name}: {type(err).__name__}: {err}")
    print(f"imported {count} modules")
    for line in failed:
        print(f"import failed: {line}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
