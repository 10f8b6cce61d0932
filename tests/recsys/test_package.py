"""alignax.recsys packaging: tfds stays optional (the `recsys` extra)."""
import subprocess
import sys


def _run(code):
  return subprocess.run([sys.executable, "-c", code], capture_output=True,
                        text=True)


def test_synthetic_path_imports_without_tfds():
  # The binary, models, CAU steps and synthetic data never import tfds.
  out = _run("import sys\n"
             "import alignax.experiments.cau_unlearn\n"
             "import alignax.recsys.cau, alignax.recsys.recommenders\n"
             "import alignax.recsys.data.sessions\n"
             "bad = [m for m in sys.modules\n"
             "       if m.split('.')[0] in ('tensorflow_datasets', 'array_record')]\n"
             "assert not bad, bad\n")
  assert out.returncode == 0, out.stderr


def test_builders_without_tfds_say_which_extra_to_install():
  # `None` in sys.modules makes `import tensorflow_datasets` fail as if absent.
  out = _run("import sys\n"
             "sys.modules['tensorflow_datasets'] = None\n"
             "import alignax.recsys.data.builders\n")
  assert out.returncode != 0
  assert "ImportError" in out.stderr
  assert "pip install 'alignax[recsys]'" in out.stderr
