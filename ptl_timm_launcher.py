"""The ``ptl-timm`` console script: ``--version`` is answered from the installed package's metadata without
importing torch; everything else goes to :func:`ptl_timm.cli.main`.

It lives outside the ``ptl_timm`` package because importing anything inside it runs ``import ptl_timm``,
which registers the models in timm and so imports torch (seconds, before a single line is printed).
"""
import sys
from importlib import metadata
from typing import List, Optional

DISTRIBUTION = 'ptl_timm'


def main(argv: Optional[List[str]] = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args == ['--version']:
        try:
            print(f'{DISTRIBUTION} {metadata.version(DISTRIBUTION)}')
            return 0
        except metadata.PackageNotFoundError:  # a checkout that is not installed: the package knows its version
            pass
    from ptl_timm.cli import main as run
    return run(args)


if __name__ == '__main__':
    sys.exit(main())
