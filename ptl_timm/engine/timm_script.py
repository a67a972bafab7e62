"""Run one of timm's own scripts (``validate.py``, ``inference.py``, ``benchmark.py``, ``train.py``)
with the ptl_timm models registered.

timm's scripts are not in its wheel (clone the GitHub repository at the installed version's tag).
``train.py`` can import ptl_timm itself (``--device-modules ptl_timm``); the others cannot, so:

    python -m ptl_timm.engine.timm_script path/to/validate.py data/market1501_if --model ptl_resnet50 ...

imports ptl_timm (which registers every model in timm's registry) and runs the script as ``__main__``
with the remaining arguments.
"""
import runpy
import sys
from pathlib import Path
from typing import List, Optional

import ptl_timm  # noqa: F401  (registers the models)

__all__ = ['run_timm_script']


def run_timm_script(script: str, args: List[str]) -> None:
    path = Path(script)
    if not path.is_file():
        raise FileNotFoundError(
            f'timm script {path} does not exist; clone https://github.com/huggingface/pytorch-image-models at the '
            f'tag of your timm version and pass the path of its train.py / validate.py')
    sys.path.insert(0, str(path.parent.resolve()))  # the scripts import their siblings
    sys.argv = [str(path)] + list(args)
    runpy.run_path(str(path), run_name='__main__')


def main(argv: Optional[List[str]] = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        raise SystemExit('usage: python -m ptl_timm.engine.timm_script SCRIPT.py [script arguments]')
    run_timm_script(argv[0], argv[1:])


if __name__ == '__main__':
    main()
