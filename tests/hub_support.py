"""An offline Hugging Face Hub for tests: a cache in huggingface_hub's layout and an endpoint that refuses."""
import os
import shutil
from pathlib import Path

from ptl_timm.hub.pretrained import sha256_file


def build_hub_cache(folder: Path, cache: Path, repo_id: str) -> None:
    """The huggingface_hub cache layout: blobs named by hash, a snapshot of links, refs/main."""
    repo = cache / f'models--{repo_id.replace("/", "--")}'
    commit = 'a' * 40
    (repo / 'refs').mkdir(parents=True)
    (repo / 'refs' / 'main').write_text(commit)
    (repo / 'blobs').mkdir()
    snapshot = repo / 'snapshots' / commit
    snapshot.mkdir(parents=True)
    for file in folder.iterdir():
        blob = repo / 'blobs' / sha256_file(file)
        shutil.copyfile(file, blob)
        (snapshot / file.name).symlink_to(os.path.relpath(blob, snapshot))


def offline_hub(monkeypatch, cache: Path) -> None:
    """An empty Hub cache and an endpoint that refuses connections (loopback, nothing listens on 9)."""
    import huggingface_hub.constants as constants
    monkeypatch.setattr(constants, 'HF_HUB_CACHE', str(cache))
    monkeypatch.setattr(constants, 'ENDPOINT', 'http://127.0.0.1:9')
