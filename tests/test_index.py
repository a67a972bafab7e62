"""The gallery index (ptl_timm.index): exact streamed search equals a brute-force scan, add embeds only new
images, remove by path or identity, one writer at a time, the model check, damaged files refused in one line,
faiss agrees with exact search when it visits every list, and `ptl-timm index` end to end. The kill at every
file-system step is in test_atomic.py."""
import json
import os
import shutil
import signal
import time

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F

from ptl_timm.cli import main
from ptl_timm.data.synth import SYNTH_DOMAINS, generate_synthetic
from ptl_timm.errors import CorruptFileError, InputError, OutputError
from ptl_timm.eval.retrieval import faiss_available
from ptl_timm.hub import save_pretrained
from ptl_timm.index import ImageIndex
from ptl_timm.index import ann
from ptl_timm.index.store import LOCK_NAME, SHARD_DIR, known_paths, open_snapshot

DIM = 8
IMG_SIZE = (64, 32)
DESCRIPTION = dict(model=dict(source='synthetic', architecture='none', embedding_dim=DIM, probe=[]),
                   preprocessing=dict(input_size=[3, *IMG_SIZE], interpolation='bilinear', mean=[0.5] * 3,
                                      std=[0.5] * 3, crop_pct=1.0, crop_mode='squash', flip=False))


def embeddings(n, seed=0):
    return F.normalize(torch.randn(n, DIM, generator=torch.Generator().manual_seed(seed)), dim=1)


def small_index(folder, n=23, rows_per_shard=5, dtype='float16', faiss=False):
    index = ImageIndex.create(folder, DESCRIPTION, dtype=dtype, rows_per_shard=rows_per_shard, faiss=faiss)
    feats = embeddings(n)
    index.add_embeddings(feats, [f'/g/{i}.jpg' for i in range(n)], [str(i % 4) for i in range(n)],
                         [f'c{i % 2}' for i in range(n)])
    return index, feats


def stored(feats, dtype='float16'):
    return feats.to(getattr(torch, dtype)).float()


def brute_force(queries, gallery, k, excluded=None):
    """Top-k by score descending then index ascending, by sorting every score."""
    scores = queries @ gallery.T
    if excluded is not None:
        scores[excluded] = float('-inf')
    order = np.lexsort((np.broadcast_to(np.arange(len(gallery)), scores.shape), -scores.numpy()), axis=1)[:, :k]
    return torch.from_numpy(order)


@pytest.mark.parametrize('dtype', ['float16', 'float32'])
def test_exact_search_equals_a_brute_force_scan_across_shards(tmp_path, dtype):
    index, feats = small_index(tmp_path / 'idx', dtype=dtype)
    queries = embeddings(6, seed=1)
    with open_snapshot(index.folder) as snapshot:
        hits = index.search(snapshot, queries, k=7)
        assert [s.rows for s in snapshot.shards] == [5, 5, 5, 5, 3]
    expected = brute_force(queries, stored(feats, dtype), 7)  # image ids are 0..22 in insertion order
    assert torch.equal(hits.ids, expected)
    torch.testing.assert_close(hits.scores, (queries @ stored(feats, dtype).T).gather(1, expected))


def test_exclusions_skip_the_query_image_and_its_camera(tmp_path):
    index, feats = small_index(tmp_path / 'idx')
    with open_snapshot(index.folder) as snapshot:
        codes = snapshot.camera_codes()
        hits = index.search(snapshot, feats[:2], k=30, exclude_ids=torch.tensor([0, -1]),
                            exclude_cameras=torch.tensor([-1, codes['c1']]))
    assert 0 not in hits.ids[0].tolist() and len(hits.ids[0][hits.ids[0] >= 0]) == 22
    assert all(i % 2 == 0 for i in hits.ids[1][hits.ids[1] >= 0].tolist())  # odd images are camera c1
    assert hits.ids[1].tolist().count(-1) == 30 - 12 and torch.isinf(hits.scores[1][hits.ids[1] < 0]).all()


def test_add_skips_known_paths_refills_the_last_shard_and_deletes_replaced_files(tmp_path):
    index, feats = small_index(tmp_path / 'idx', n=7)
    more = embeddings(6, seed=2)
    paths = [f'/g/{i}.jpg' for i in (0, 1)] + [f'/new/{i}.jpg' for i in range(4)]
    assert index.add_embeddings(more, paths) == 4
    with open_snapshot(index.folder) as snapshot:
        assert [s.rows for s in snapshot.shards] == [5, 5, 1]
        files = {s.path.name for s in snapshot.shards}
        hits = index.search(snapshot, more[2:3], k=1)
    assert sorted(p.name for p in (index.folder / SHARD_DIR).iterdir()) == sorted(files)  # old shard files gone
    assert hits.ids.tolist() == [[7]] and index.info()['images'] == 11


def test_remove_by_identity_and_path_keeps_the_rest(tmp_path):
    index, feats = small_index(tmp_path / 'idx')
    assert index.remove(identities=['1'], paths=['/g/2.jpg']) == 7  # identity 1: images 1, 5, ..., 21
    gone = {1, 5, 9, 13, 17, 21, 2}
    kept = [i for i in range(23) if i not in gone]
    with open_snapshot(index.folder) as snapshot:
        hits = index.search(snapshot, feats, k=23)
        assert sum(s.rows for s in snapshot.shards) == 16 and all(s.rows <= 5 for s in snapshot.shards)
    assert set(hits.ids[hits.ids >= 0].tolist()) == set(kept)
    expected = torch.tensor(kept)[brute_force(feats, stored(feats[kept]), 16)]
    assert torch.equal(hits.ids[:, :16], expected)


def test_export_yields_every_image_once_with_its_metadata(tmp_path):
    index, feats = small_index(tmp_path / 'idx', dtype='float32')
    index.remove(paths=['/g/4.jpg'])
    exported = list(index.export())
    ids = torch.cat([e[0] for e in exported])
    assert sorted(ids.tolist()) == [i for i in range(23) if i != 4]
    torch.testing.assert_close(torch.cat([e[1] for e in exported]), feats[ids])
    assert [r['path'] for e in exported for r in e[2]] == [f'/g/{i}.jpg' for i in ids.tolist()]


def test_removing_nothing_that_matches_is_an_error_and_changes_nothing(tmp_path):
    index, _ = small_index(tmp_path / 'idx')
    before = sorted(os.listdir(index.folder))
    with pytest.raises(InputError, match='nothing in .* matches'):
        index.remove(identities=['nobody'])
    assert sorted(os.listdir(index.folder)) == before


def test_a_second_writer_is_refused_and_a_killed_writer_leaves_no_lock(tmp_path):
    index, _ = small_index(tmp_path / 'idx')
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: hold the writer lock until killed
        from filelock import FileLock
        lock = FileLock(str(index.folder / LOCK_NAME))
        lock.acquire()
        os.write(write, b'x')
        time.sleep(60)
        os._exit(0)
    try:
        os.read(read, 1)
        with pytest.raises(OutputError, match='being written by another process'):
            index.add_embeddings(embeddings(1, seed=3), ['/other.jpg'])
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    assert index.add_embeddings(embeddings(1, seed=3), ['/other.jpg']) == 1  # the kernel released the lock


def test_a_damaged_shard_is_a_one_line_error_naming_it(tmp_path):
    index, feats = small_index(tmp_path / 'idx')
    shard = sorted((index.folder / SHARD_DIR).iterdir())[-1]  # the last shard: an add refills it
    shard.write_bytes(shard.read_bytes()[:100])
    with open_snapshot(index.folder) as snapshot, pytest.raises(CorruptFileError, match=f'index shard .*{shard.name}'):
        index.search(snapshot, feats[:1], k=3)
    with pytest.raises(CorruptFileError):
        index.add_embeddings(embeddings(1, seed=3), ['/other.jpg'])  # refills nothing, writes nothing
    assert len(list((index.folder / SHARD_DIR).iterdir())) == 5


def test_a_folder_that_is_not_an_index_or_already_one_is_refused(tmp_path):
    with pytest.raises(InputError, match='not a gallery index'):
        ImageIndex(tmp_path)
    small_index(tmp_path / 'idx')
    with pytest.raises(InputError, match='already holds an index'):
        ImageIndex.create(tmp_path / 'idx', DESCRIPTION)


def test_reranking_reorders_only_the_candidates(tmp_path):
    index, feats = small_index(tmp_path / 'idx')
    queries = embeddings(3, seed=4)
    with open_snapshot(index.folder) as snapshot:
        plain = index.search(snapshot, queries, k=8)
        reranked = index.search(snapshot, queries, k=8, rerank=True, candidates=8)
    for q in range(3):
        assert set(reranked.ids[q].tolist()) == set(plain.ids[q].tolist())
        assert torch.equal(reranked.distances[q], reranked.distances[q].sort().values)


@pytest.mark.skipif(not faiss_available(), reason='faiss is an optional extra')
def test_faiss_agrees_with_exact_search_flat_and_inverted_file_visiting_every_list(tmp_path, monkeypatch):
    monkeypatch.setattr(ann, 'IVF_MIN', 300)
    index, feats = small_index(tmp_path / 'idx', n=60, rows_per_shard=16, faiss=True)
    queries = embeddings(5, seed=5)
    with open_snapshot(index.folder) as snapshot:
        exact = index.search(snapshot, queries, k=10)
        flat = index.search(snapshot, queries, k=10, backend='faiss')
    assert torch.equal(flat.ids, exact.ids)
    index.add_embeddings(embeddings(400, seed=6), [f'/more/{i}.jpg' for i in range(400)])
    index.remove(identities=['2'])
    assert index.info()['faiss']['kind'] == 'inverted file'
    with open_snapshot(index.folder) as snapshot:
        exact = index.search(snapshot, queries, k=10, exclude_ids=torch.tensor([3, -1, -1, -1, -1]))
        nlist = ann.load(index.folder / snapshot.state('faiss_file')).nlist
        ivf = index.search(snapshot, queries, k=10, backend='faiss', nprobe=nlist,
                           exclude_ids=torch.tensor([3, -1, -1, -1, -1]))
    assert torch.equal(ivf.ids, exact.ids)


@pytest.fixture(scope='module')
def gallery(tmp_path_factory):
    root = tmp_path_factory.mktemp('index')
    data = generate_synthetic(root, SYNTH_DOMAINS[0], num_ids=8, images_per_id=4, num_cams=2, img_size=IMG_SIZE)
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = timm.create_model('ptl_net', num_classes=0, backbone='test_resnet', embed_dim=32, classifier_dims=(16,))
        models.append(save_pretrained(model, root / f'model{seed}'))
    return data, models


def _tree(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob('*')) if p.is_file()}


@pytest.mark.slow
def test_index_commands_build_one_camera_add_another_query_and_remove(gallery, tmp_path, capsys):
    data, (model, _) = gallery
    gallery_dir = data / 'bounding_box_test'
    cam1, cam2 = (sorted(str(p) for p in gallery_dir.glob(f'*_c{c}s*')) for c in (1, 2))
    common = ['--model', str(model), '--device', 'cpu', '--workers', '0', '--quiet', '--index', str(tmp_path / 'idx')]
    assert main(['index', 'build', *common, '--images', *cam1]) == 0
    assert main(['index', 'add', *common, '--images', str(gallery_dir)]) == 0
    assert f'added {len(cam2)} images, updated 0 whose file changed ({len(cam1)} already in the index)' in \
        capsys.readouterr().out
    query = sorted(str(p) for p in (data / 'query').iterdir())[:3]
    assert main(['index', 'query', *common, '--query', *query, '--top-k', '4', '--exclude-camera',
                 '--output', str(tmp_path / 'ranks.json')]) == 0
    out = capsys.readouterr().out
    assert 'protocol: the query image itself is excluded' in out and 'own camera are excluded' in out
    rankings = json.loads((tmp_path / 'ranks.json').read_text())
    assert all(len(r['results']) == 4 for r in rankings) and (tmp_path / 'ranks.png').is_file()
    assert all(item['camid'] != r['camid'] and item['correct'] in (True, False)
               for r in rankings for item in r['results'])
    assert main(['index', 'remove', '--index', str(tmp_path / 'idx'), '--paths', cam1[0]]) == 0
    assert main(['index', 'info', '--index', str(tmp_path / 'idx'), '--verify']) == 0
    info = json.loads(capsys.readouterr().out.split('\n', 1)[1])
    assert info['images'] == len(cam1) + len(cam2) - 1 and set(info['cameras']) == {'c1', 'c2'}


@pytest.mark.slow
def test_another_model_is_refused_in_one_line_and_the_index_is_unchanged(gallery, tmp_path, capsys):
    data, (model, other) = gallery
    images = sorted(str(p) for p in (data / 'bounding_box_test').iterdir())
    ImageIndex.build(tmp_path / 'idx', model, images[:6], device='cpu')
    before = _tree(tmp_path / 'idx')
    for action, extra in (('add', ['--images', *images[6:]]),
                          ('query', ['--query', images[0], '--output', str(tmp_path / 'r.json')])):
        status = main(['index', action, '--model', str(other), '--index', str(tmp_path / 'idx'), '--device', 'cpu',
                       '--workers', '0', '--quiet', *extra])
        err = capsys.readouterr().err
        assert status == 2 and err.count('\n') == 1
        assert 'is not the model the index' in err and 'other embeddings' in err
    assert _tree(tmp_path / 'idx') == before and not (tmp_path / 'r.json').exists()
    assert ImageIndex(tmp_path / 'idx').add(model, images[6:8], device='cpu') == dict(added=2, updated=0, skipped=0)


def _sql(folder, statement):
    """Change the current generation's metadata in place (what an older ptl_timm, or a killed build, left)."""
    import sqlite3
    db = sqlite3.connect(folder / (folder / 'CURRENT').read_text().strip())
    db.execute(statement)
    db.commit()
    db.close()


def test_identity_spellings_0007_and_7_are_one_identity_in_add_remove_and_info(tmp_path):
    index, _ = small_index(tmp_path / 'idx', n=8)  # identities '0', '1', '2', '3' twice
    index.add_embeddings(embeddings(1, seed=7), ['/h/a.jpg'], ['0001'])
    _sql(index.folder, "UPDATE images SET identity = '0002' WHERE path = '/g/2.jpg'")  # stored verbatim by older code
    info = index.info()
    assert info['identities'] == 4 and info['identity_examples'] == ['0', '1', '2', '3']
    assert index.remove(identities=['01']) == 3  # /g/1, /g/5 and /h/a
    assert index.remove(identities=['2']) == 2  # /g/2 (stored '0002') and /g/6


def test_add_replaces_entries_whose_content_changed_and_takes_older_indexes_as_unchanged(tmp_path):
    index, feats = small_index(tmp_path / 'idx', n=3, dtype='float32')
    _sql(index.folder, 'ALTER TABLE images DROP COLUMN content')  # an index written before contents were recorded
    with open_snapshot(index.folder) as snapshot:
        assert known_paths(snapshot.db, ['/g/0.jpg', '/n/0.jpg']) == {'/g/0.jpg': (0, None)}
    first, second = embeddings(2, seed=8), embeddings(2, seed=9)
    assert index.add_embeddings(first, ['/g/0.jpg', '/n/0.jpg'], contents=['5:1', '5:1']) == 1  # /g/0: unchanged
    assert index.add_embeddings(second, ['/n/0.jpg', '/n/1.jpg'], contents=['6:2', '5:1']) == 2  # /n/0 replaced
    assert index.add_embeddings(second[:1], ['/n/0.jpg'], contents=['6:2']) == 0
    stored = {r['path']: e for ids, emb, records in index.export() for r, e in zip(records, emb)}
    assert sorted(stored) == ['/g/0.jpg', '/g/1.jpg', '/g/2.jpg', '/n/0.jpg', '/n/1.jpg']
    for path, expected in (('/g/0.jpg', feats[0]), ('/n/0.jpg', second[0]), ('/n/1.jpg', second[1])):
        torch.testing.assert_close(stored[path], expected)


@pytest.mark.skipif(not faiss_available(), reason='faiss is an optional extra')
def test_faiss_search_of_an_emptied_index_finds_nothing_like_the_exact_search(tmp_path):
    index, feats = small_index(tmp_path / 'idx', n=4, faiss=True)
    index.remove(paths=[f'/g/{i}.jpg' for i in range(4)])
    with open_snapshot(index.folder) as snapshot:
        for backend in ('exact', 'faiss'):
            for rerank in (False, True):
                hits = index.search(snapshot, feats[:2], k=3, backend=backend, rerank=rerank, candidates=5)
                assert hits.ids.tolist() == [[-1] * 3] * 2, (backend, rerank)


def test_build_takes_over_a_folder_whose_build_never_committed(tmp_path):
    index, _ = small_index(tmp_path / 'idx', n=2)
    for path in [index.folder / 'CURRENT', *index.folder.glob('meta-*'), *(index.folder / SHARD_DIR).iterdir()]:
        path.unlink()  # index.json and shards/ left: a build killed before it wrote CURRENT
    with pytest.raises(InputError, match='build did not finish.*build it again'):
        ImageIndex(index.folder).info()
    index = ImageIndex.create(index.folder, DESCRIPTION)
    assert index.add_embeddings(embeddings(2), ['/a.jpg', '/b.jpg']) == 2 and index.info()['images'] == 2
    with pytest.raises(InputError, match='already holds an index'):
        ImageIndex.create(index.folder, DESCRIPTION)


@pytest.mark.parametrize('action, argv, flag', [
    ('query', ['--top-k', '0'], '--top-k'), ('query', ['--max-rows', '0'], '--max-rows'),
    ('query', ['--nprobe', '0'], '--nprobe'), ('query', ['--candidates', '0'], '--candidates'),
    ('query', ['--rerank', '--top-k', '20', '--candidates', '10'], '--candidates'),
    ('query', ['--png', '{tmp}'], '--png'), ('query', ['--output', '{tmp}/q.txt'], '--output'),
    ('info', ['--json', '{tmp}'], '--json'), ('build', ['--rows-per-shard', '0'], '--rows-per-shard'),
])
def test_bad_index_flags_are_refused_in_one_line_before_anything_is_read(tmp_path, capsys, action, argv, flag):
    common = {'query': ['--model', str(tmp_path / 'model'), '--query', str(tmp_path / 'q.jpg'),
                        '--output', str(tmp_path / 'r.json')],
              'build': ['--model', str(tmp_path / 'model'), '--images', str(tmp_path / 'q.jpg')], 'info': []}[action]
    try:  # argparse exits, the command returns
        status = main(['index', action, '--index', str(tmp_path / 'missing'), *common,
                       *(a.format(tmp=tmp_path) for a in argv)])
    except SystemExit as e:
        status = e.code
    err = capsys.readouterr().err
    assert status == 2 and err.count('\n') == 1 and flag in err, err
    assert sorted(os.listdir(tmp_path)) == []


@pytest.mark.slow
def test_a_given_identity_0009_matches_file_names_of_person_9(gallery, tmp_path):
    data, (model, _) = gallery
    door = tmp_path / 'door'
    door.mkdir()
    (door / 'x.jpg').write_bytes((data / 'bounding_box_test' / '0009_c2s1_002075_01.jpg').read_bytes())
    extract = dict(device='cpu', num_workers=0, progress=False)
    index = ImageIndex.build(tmp_path / 'idx', model, door, identity='0009', **extract)
    result = index.query(model, data / 'query' / '0009_c1s1_001050_01.jpg', top_k=1, **extract)
    assert [(r['pid'], r['correct']) for r in result['rankings'][0]['results']] == [('9', True)]


@pytest.mark.slow
def test_add_embeds_again_a_file_whose_content_changed(gallery, tmp_path):
    data, (model, _) = gallery
    images = sorted((data / 'bounding_box_test').iterdir())
    cams = tmp_path / 'cams'
    cams.mkdir()
    for name, source in (('latest.jpg', images[0]), ('other.jpg', images[1])):
        (cams / name).write_bytes(source.read_bytes())
    extract = dict(device='cpu', num_workers=0, progress=False)
    index = ImageIndex.build(tmp_path / 'idx', model, cams, **extract)
    (cams / 'latest.jpg').write_bytes(images[5].read_bytes())  # the camera overwrote it
    os.utime(cams / 'latest.jpg', ns=(10 ** 18, 10 ** 18))  # a time apart even on a coarse clock
    assert index.add(model, cams, **extract) == dict(added=0, updated=1, skipped=1)
    result = index.query(model, images[5], top_k=1, **extract)['rankings'][0]['results'][0]
    assert result['path'] == str(cams / 'latest.jpg') and result['score'] > 0.999
    assert index.info()['images'] == 2


@pytest.mark.slow
def test_a_failed_build_leaves_nothing_behind_and_the_retry_works(gallery, tmp_path, capsys):
    data, (model, _) = gallery
    images = [str(p) for p in sorted((data / 'bounding_box_test').iterdir())[:2]]
    broken = tmp_path / 'broken.jpg'
    broken.write_bytes(b'not an image')
    (tmp_path / 'empty').mkdir()
    for folder in (tmp_path / 'new' / 'idx', tmp_path / 'empty'):
        common = ['index', 'build', '--model', str(model), '--device', 'cpu', '--workers', '0', '--quiet',
                  '--index', str(folder)]
        assert main([*common, '--images', *images, str(broken)]) == 2
        assert 'broken.jpg' in capsys.readouterr().err
        assert sorted(os.listdir(tmp_path)) == ['broken.jpg', 'empty'] and os.listdir(tmp_path / 'empty') == []
        assert main([*common, '--images', *images]) == 0
        shutil.rmtree(tmp_path / 'new', ignore_errors=True)
