import sys

from ptl_timm.cli import main

if __name__ == '__main__':
    sys.exit(main())
