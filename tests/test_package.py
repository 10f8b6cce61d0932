"""Package-level contracts."""
import subprocess
import sys


def test_objectives_import_without_flax():
  code = ("import sys, alignax.objectives; "
          "bad = [m for m in sys.modules if m.split('.')[0] in ('flax', 'torch')]; "
          "assert not bad, bad")
  subprocess.run([sys.executable, "-c", code], check=True)


def test_subpackages_import():
  import alignax.framework.hf  # noqa: F401
  import alignax.framework.sharding  # noqa: F401
  import alignax.kernels  # noqa: F401
  import alignax.experiments  # noqa: F401
