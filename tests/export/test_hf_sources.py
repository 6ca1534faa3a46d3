"""The export's model code on a small project written here: the wrappers, the family files and the kernel
folders they import, flattened into one folder with only their relative imports renamed; the flat folder
imports as a package of its own; imports that cannot be shipped are named."""
from __future__ import annotations

import importlib
import sys
import textwrap
from pathlib import Path

import pytest

from neurograph.launch.config import ConfigError
from neurograph.launch.export import hf

FILES = {
    "model/configuration_neurograph.py": "CONFIG = 1\n",
    "model/modeling_neurograph.py": "from .family import forward  # a family file\n",
    "model/family.py": """\
        from .selective_scan import scan  # the kernel op model/__init__.py registers as a sibling


        def forward(x):
            return scan(x) + 1
        """,
    "kernels/cpu_extension.py": "def available():\n    return False\n",
    "kernels/selective_scan/__init__.py": """\
        from ..cpu_extension import available
        from .reference import (
            scan_ref)


        def scan(x):
            if available():
                from .cpu import scan_cpp

                return scan_cpp(x)
            return scan_ref(x)
        """,
    "kernels/selective_scan/reference.py": "def scan_ref(x):\n    return 2 * x\n",
    "kernels/selective_scan/cpu.py": "from .reference import scan_ref as scan_cpp  # noqa: F401\n",
}


@pytest.fixture()
def project(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "project"
    for name, text in FILES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(textwrap.dedent(text))
    monkeypatch.setattr(hf, "REPO", root)
    monkeypatch.setattr(hf, "MODEL_DIR", root / "model")
    monkeypatch.setattr(hf, "KERNELS_DIR", root / "kernels")
    return root


def test_kernel_folders_ship_flat_with_renamed_imports(project, tmp_path, monkeypatch):
    out = tmp_path / "flat"
    out.mkdir()
    assert hf.write_model_sources(out) == ["configuration_neurograph.py", "cpu_extension.py", "family.py",
                                           "modeling_neurograph.py", "selective_scan.py", "selective_scan_cpu.py",
                                           "selective_scan_reference.py"]
    for shipped, source in (("family.py", "model/family.py"), ("modeling_neurograph.py", "model/modeling_neurograph.py"),
                            ("selective_scan_reference.py", "kernels/selective_scan/reference.py")):
        assert (out / shipped).read_bytes() == (project / source).read_bytes()  # nothing to rename
    assert (out / "selective_scan.py").read_text() == textwrap.dedent("""\
        from .cpu_extension import available
        from .selective_scan_reference import (
            scan_ref)


        def scan(x):
            if available():
                from .selective_scan_cpu import scan_cpp

                return scan_cpp(x)
            return scan_ref(x)
        """)
    assert (out / "selective_scan_cpu.py").read_text().startswith("from .selective_scan_reference import scan_ref")
    monkeypatch.syspath_prepend(str(tmp_path))
    modeling = importlib.import_module("flat.modeling_neurograph")
    try:
        assert modeling.forward(3) == 7
    finally:
        for name in [n for n in sys.modules if n == "flat" or n.startswith("flat.")]:
            del sys.modules[name]


@pytest.mark.parametrize("line,error", [
    ("from ...outside import x\n", "names no module of model/ or kernels/"),
    ("from .missing import x\n", "names no module of model/ or kernels/"),
    ("from . import reference\n", "cannot be shipped"),
    ("from neurograph.kernels import installed\n", "`neurograph` imports cannot be shipped"),
])
def test_imports_that_cannot_be_shipped_are_named(project, tmp_path, line, error):
    path = project / "kernels" / "selective_scan" / "reference.py"
    path.write_text(line + path.read_text())
    with pytest.raises(ConfigError, match=error) as raised:
        hf.write_model_sources(tmp_path)
    assert "kernels/selective_scan/reference.py" in str(raised.value)
