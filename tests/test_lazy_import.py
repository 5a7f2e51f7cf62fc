"""``import dlfast`` reaches every public submodule on demand (PEP 562) and stays light."""
import pkgutil
import sys

import pytest

import dlfast
from process_helpers import fresh_json


def test_import_dlfast_imports_neither_matplotlib_nor_tqdm():
    got = fresh_json("import sys, json, dlfast\n"
                     "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
                     "('matplotlib', 'tqdm') or m.startswith('dlfast.'))))")
    assert not [m for m in got if m.split(".")[0] in ("matplotlib", "tqdm")], got
    # the submodules are not imported yet either (only the backend switch is)
    assert not set(got) & {f"dlfast.{m}" for m in dlfast.SUBMODULES}, got


def test_submodules_load_on_first_use_in_a_fresh_interpreter():
    got = fresh_json("import sys, json, dlfast\n"
                     "before = 'dlfast.optim' in sys.modules\n"
                     "adam = dlfast.optim.Adam\n"
                     "after = 'dlfast.optim' in sys.modules\n"
                     "ds = dlfast.datasets.load_digits\n"
                     "print(json.dumps([before, after, adam.__name__,"
                     " dlfast.optim is sys.modules['dlfast.optim'],"
                     " 'tqdm' in sys.modules, 'matplotlib' in sys.modules]))")
    assert got == [False, True, "Adam", True, False, False]


def test_every_public_submodule_is_listed_and_reachable():
    found = {m.name for m in pkgutil.iter_modules(dlfast.__path__) if not m.name.startswith("_")}
    assert found == set(dlfast.SUBMODULES)
    for name in dlfast.SUBMODULES:
        mod = getattr(dlfast, name)
        assert mod is sys.modules[f"dlfast.{name}"]
        assert name in dir(dlfast)
    assert "set_backend" in dir(dlfast)


def test_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        dlfast.nope
    assert not hasattr(dlfast, "_backends_nope")
    from dlfast import optim                      # the usual import forms keep working
    assert optim is dlfast.optim
