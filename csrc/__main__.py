"""`python -m lmforge.ops`: one line saying which kernels module loads here, or why none does."""

import sys

from lmforge.ops import load, load_error

module = load()
if module is None:
    print(f"lmforge kernels: none loaded, the reference ops will run ({load_error()})")
    sys.exit(1)
print(f"lmforge kernels: {module.__name__} ({module.build_info()['simd']})")
