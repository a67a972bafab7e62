"""Run one of timm's own scripts (``validate.py``, ``inference.py``, ``benchmark.py``, ``train.py``)
with the ptl_timm models registered.

timm's scripts are not in its wheel (clone the GitHub repository at the installed version's tag).
``train.py`` can import ptl_timm itself (``--device-modules ptl_timm``); the others cannot, so:

    python -m ptl_timm.tools.timm_script path/to/validate.py data/market1501_if --model ptl_resnet50 ...

imports ptl_timm (which registers every model in timm's registry) and runs the script as ``__main__``
with the remaining arguments.
"""
import runpy
import sys
from pathlib import Path
from typing import List, Optional

import ptl_timm  # noqa: F401  (registers the models)
from ptl_timm.errors import InputError

__all__ = ['run_timm_script']


def run_timm_script(script: str, args: List[str]) -> None:
    """Run ``script`` as ``__main__`` with ``args`` as its command line. ``sys.argv`` and ``sys.path``
    (the script's folder is put first: the scripts import their siblings) are the script's while it
    runs and the caller's again afterwards."""
    path = Path(script)
    if not path.is_file():
        raise InputError(
            f'timm script {path} does not exist; clone https://github.com/huggingface/pytorch-image-models at the '
            f'tag of your timm version and pass the path of its train.py / validate.py')
    saved = sys.argv, list(sys.path)
    sys.path.insert(0, str(path.parent.resolve()))
    sys.argv = [str(path)] + list(args)
    try:
        runpy.run_path(str(path), run_name='__main__')
    finally:
        sys.argv, sys.path[:] = saved[0], saved[1]


def main(argv: Optional[List[str]] = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        raise SystemExit('usage: python -m ptl_timm.tools.timm_script SCRIPT.py [script arguments]')
    run_timm_script(argv[0], argv[1:])


if __name__ == '__main__':
    main()
