"""The data path's shape: one relay, speaking RFC 6455 itself."""

import pkgutil
import subprocess
import sys

import wslb.proxy


def test_no_proxy_module_imports_autobahn():
    """Autobahn is the demo worker's and the tests' reference, not the data path's."""
    names = [f"wslb.proxy.{m.name}" for m in pkgutil.iter_modules(wslb.proxy.__path__)]
    code = (
        "import importlib, sys\n"
        f"for name in {names!r}: importlib.import_module(name)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'autobahn'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,  # reactor-safe: test
                         timeout=60, check=True).stdout
    assert out.strip() == "[]"
    assert "wslb.proxy.splice" in names and "wslb.proxy.service" in names


def test_the_package_map_names_every_module():
    """proxy/__init__.py lists the modules in the order a connection meets them."""
    modules = {m.name for m in pkgutil.iter_modules(wslb.proxy.__path__)}
    assert {m for m in modules if f"{m}.py" not in wslb.proxy.__doc__} == set()
