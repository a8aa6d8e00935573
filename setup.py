"""Build the Cython extensions.

Only the extension list and the Cython directives live here; metadata is in pyproject.toml.
FASTCT_DEBUG=1 builds with bounds checking and line tracing; FASTCT_ANNOTATE=1 writes the
`cython -a` HTML next to each .pyx so the inner loops can be checked for Python calls.
"""
import os

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("FASTCT_DEBUG", "") not in ("", "0")
ANNOTATE = os.environ.get("FASTCT_ANNOTATE", "") not in ("", "0")

directives = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": False,
    "initializedcheck": False,
    "nonecheck": False,
    "cdivision": True,
    "embedsignature": True,
}
macros = [("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")]
cflags = os.environ.get("FASTCT_OPT_CFLAGS", "-O3 -g").split()
if DEBUG:
    directives["linetrace"] = True
    macros += [("CYTHON_TRACE_NOGIL", "1"), ("FASTCT_DEBUG", "1")]
    cflags = ["-O0", "-g"]

includes = [np.get_include(), "fastct/include"]


def ext(name, source):
    return Extension(name, [source], include_dirs=includes, define_macros=macros,
                     extra_compile_args=cflags + ["-Wno-unused-function"])


extensions = [
    ext("fastct._engine", "fastct/_engine.pyx"),
    ext("fastct.capture._reader", "fastct/capture/_reader.pyx"),
]

setup(ext_modules=cythonize(extensions, compiler_directives=directives, annotate=ANNOTATE))
