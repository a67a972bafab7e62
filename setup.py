"""Metadata lives in setup.cfg; this file only ships ``weights/manifest.json`` inside the package,
so an installed wheel knows the published pretrained tags (see ``ptl_timm.weights``)."""
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithManifest(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, 'editable_mode', False):
            return  # an editable install reads the checkout's weights/manifest.json directly
        target = Path(self.build_lib) / 'ptl_timm' / 'weights_manifest.json'
        self.mkpath(str(target.parent))
        self.copy_file('weights/manifest.json', str(target))


setup(cmdclass={'build_py': BuildPyWithManifest})
