"""The runtime never imports torch: a bundle runs with onnxruntime, numpy and the tokenizer."""

import subprocess
import sys

RUNTIME_MODULES = ["lmforge.plugins.runtime", "lmforge.plugins.runtime.bundle",
                   "lmforge.plugins.runtime.manifest", "lmforge.plugins.runtime.sampling",
                   "lmforge.plugins.runtime.generate", "lmforge.plugins.runtime.classify"]


def test_importing_the_runtime_imports_no_torch():
    script = ("import sys\n" + "".join(f"import {m}\n" for m in RUNTIME_MODULES)
              + "print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "False"
