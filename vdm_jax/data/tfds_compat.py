"""Small fixes that let tensorflow-datasets 4.9.x builders run without TensorFlow on Python 3.10+.

`DatasetBuilder.code_path` (used to look for a checksums file next to the builder's module)
touches `importlib_resources`, a backport that tfds only requires on Python < 3.9, so on a
modern Python it raises ModuleNotFoundError for any builder defined inside a package. Builders
here replace it with `code_path = tfds_compat.code_path`: the builder's own source file.
"""
import inspect

from etils import epath
from tensorflow_datasets.core.utils import py_utils


@py_utils.classproperty
@classmethod
def code_path(cls) -> epath.Path:
  """The file that defines the builder class."""
  return epath.Path(inspect.getfile(cls))
