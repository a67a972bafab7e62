"""Operating points (ptl_timm.eval.calibration): thresholds equal a direct scan of all pairs, they travel in
config.json and the published card, and `verify` decides with them or refuses clearly."""
import itertools
import json
import math

import pytest
import timm
import torch
import torch.nn.functional as F

from ptl_timm.cli import main
from ptl_timm.data.datasets import ReIDDataset, build_dataset
from ptl_timm.data.synth import SYNTH_DOMAINS, generate_synthetic
from ptl_timm.errors import CheckpointError, InputError
from ptl_timm.eval.calibration import (
    CALIBRATION_KEY, calibrate, measured_rates, operating_points, read_calibration, select_point, verify,
    write_calibration)
from ptl_timm.eval.features import FeatureSet
from ptl_timm.eval.metrics import pairwise_distance_chunks
from ptl_timm.eval.protocol import resolve_protocol
from ptl_timm.hub import CONFIG_NAME, WEIGHTS_NAME, save_pretrained

IMG_SIZE = (64, 32)

# a hand-made set: 2-d unit vectors at these angles (degrees), identities and cameras chosen so that the
# genuine, same-camera and impostor pairs interleave in distance
ANGLES = [0, 9.1, 23.7, 41.3, 68.2, 77.9, 101.5, 128.9, 136.6, 167.3, 199.8, 211.2]  # no two pairs equally far
PIDS = [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
CAMS = [0, 1, 0, 0, 1, 1, 0, 1, 0, 1, 0, 1]


def hand_made():
    radians = torch.tensor(ANGLES, dtype=torch.float64) * math.pi / 180
    return torch.stack([radians.cos(), radians.sin()], 1).float(), torch.tensor(PIDS), torch.tensor(CAMS)


def direct_scan(feats, pids, keys, fprs):
    """The definition, pair by pair: threshold = (floor(f·n)+1)-th smallest impostor distance, accept d < t."""
    genuine, impostor = [], []
    for i, j in itertools.combinations(range(len(pids)), 2):
        d = float(1 - torch.dot(feats[i], feats[j]))
        if pids[i] != pids[j]:
            impostor.append(d)
        elif keys[i] != keys[j]:
            genuine.append(d)
    impostor.sort()
    points = []
    for fpr in sorted(fprs, reverse=True):
        threshold = impostor[math.floor(fpr * len(impostor) + 1e-9)]
        points.append((fpr, threshold, sum(g < threshold for g in genuine) / len(genuine)))
    return points, len(genuine), len(impostor)


@pytest.mark.parametrize('chunk_size', [1, 5, 256])
def test_thresholds_equal_a_direct_scan_of_all_pairs(chunk_size):
    feats, pids, cams = hand_made()
    fprs = (0.5, 0.2, 0.05)
    result = operating_points(feats, pids, cams, fprs, chunk_size=chunk_size, device='cpu')
    expected, num_genuine, num_impostor = direct_scan(feats, pids, cams, fprs)
    assert result['num_pairs'] == dict(genuine=num_genuine, impostor=num_impostor)
    for point, (fpr, threshold, tpr) in zip(result['points'], expected):
        assert point['fpr'] == fpr
        assert point['threshold'] == pytest.approx(threshold, abs=1e-6)
        assert point['tpr'] == pytest.approx(tpr)


def test_threshold_is_the_largest_distance_keeping_the_fpr_at_most_the_target():
    g = torch.Generator().manual_seed(0)
    feats = F.normalize(torch.randn(60, 4, generator=g), dim=1)
    pids, cams = torch.randint(0, 8, (60,), generator=g), torch.randint(0, 3, (60,), generator=g)
    result = operating_points(feats, pids, cams, (0.1, 0.01), chunk_size=7, device='cpu')
    _, dist = next(pairwise_distance_chunks(feats, feats, chunk_size=60, device='cpu'))  # the same distances, at once
    impostor = torch.tensor([float(dist[i, j]) for i, j in itertools.combinations(range(60), 2) if pids[i] != pids[j]])
    for point in result['points']:
        assert (impostor < point['threshold']).double().mean() <= point['fpr']
        assert (impostor <= point['threshold']).double().mean() > point['fpr']  # one more and the target is missed
        assert point['impostor_pairs_below'] == int((impostor < point['threshold']).sum())


def test_camera_protocol_drops_same_camera_pairs_and_self_protocol_only_the_same_file():
    feats, pids, cams = hand_made()
    paths = [f'{i}.jpg' for i in range(len(PIDS))]
    camera = resolve_protocol([FeatureSet(feats, pids, cams, paths)])
    without = resolve_protocol([FeatureSet(feats, pids, torch.full_like(cams, -1), paths)])
    assert camera.name == 'camera' and without.name == 'self'
    same_identity = sum(math.comb(PIDS.count(p), 2) for p in set(PIDS))
    cross_camera = sum(1 for i, j in itertools.combinations(range(len(PIDS)), 2) if PIDS[i] == PIDS[j] and CAMS[i] != CAMS[j])
    assert operating_points(feats, pids, camera.keys[0], (0.1,))['num_pairs']['genuine'] == cross_camera
    assert operating_points(feats, pids, without.keys[0], (0.1,))['num_pairs']['genuine'] == same_identity
    duplicated = FeatureSet(feats[[0, 0, 3]], pids[[0, 0, 3]], torch.full((3,), -1), ['a.jpg', 'a.jpg', 'b.jpg'])
    keys = resolve_protocol([duplicated], 'self').keys[0]
    with pytest.raises(InputError, match='no genuine pair'):  # the same file twice is not a genuine pair
        operating_points(duplicated.feats, duplicated.pids, keys, (0.5,))


def test_an_fpr_the_impostor_pairs_cannot_resolve_is_left_out_not_stored_as_if_measured(caplog):
    feats, pids, cams = hand_made()  # 54 impostor pairs: FPR 0.05 lets 2 through, 0.01 none
    result = operating_points(feats, pids, cams, (0.05, 0.01, 0.001))
    assert [p['fpr'] for p in result['points']] == [0.05]
    assert 'FPR 0.01, 0.001 left out' in caplog.text
    with pytest.raises(InputError, match=r'no target FPR \(0.01\) is resolved by the 54 impostor pairs'):
        operating_points(feats, pids, cams, (0.01,))


def test_measured_rates_count_the_pairs_below_each_threshold():
    feats, pids, cams = hand_made()
    thresholds = [0.05, 0.3, 1.2]
    rates = measured_rates(feats, pids, cams, thresholds, chunk_size=3, device='cpu')['rates']
    for threshold, (fpr, tpr) in zip(thresholds, rates):
        pairs = [(float(1 - feats[i] @ feats[j]), PIDS[i] == PIDS[j], CAMS[i] != CAMS[j])
                 for i, j in itertools.combinations(range(len(PIDS)), 2)]
        impostor = [d for d, same, _ in pairs if not same]
        genuine = [d for d, same, other_cam in pairs if same and other_cam]
        assert fpr == pytest.approx(sum(d < threshold for d in impostor) / len(impostor))
        assert tpr == pytest.approx(sum(d < threshold for d in genuine) / len(genuine))


def test_an_fpr_that_was_not_calibrated_is_refused_naming_the_ones_that_were():
    calibration = dict(points=[dict(fpr=0.01, threshold=0.3, tpr=0.9), dict(fpr=0.001, threshold=0.2, tpr=0.8)])
    assert select_point(calibration)['fpr'] == 0.001  # the strictest by default
    assert select_point(calibration, 0.01)['threshold'] == 0.3
    with pytest.raises(InputError, match=r'FPR 0.05 is not an operating point.*0.01, 0.001'):
        select_point(calibration, 0.05)


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp('calibration')
    data = generate_synthetic(root, SYNTH_DOMAINS[0], num_ids=12, images_per_id=4, num_cams=2, img_size=IMG_SIZE)
    torch.manual_seed(0)
    model = timm.create_model('ptl_net', num_classes=0, backbone='test_resnet', embed_dim=32, classifier_dims=(16,))
    folder = save_pretrained(model, root / 'model')
    return data, folder


def _copy(folder, target):
    target.mkdir()
    for f in folder.iterdir():
        (target / f.name).write_bytes(f.read_bytes())
    return target


@pytest.mark.slow
def test_calibrate_writes_its_points_into_config_json_and_verify_uses_them(checkpoint, tmp_path):
    data, folder = checkpoint
    model = _copy(folder, tmp_path / 'model')
    before = json.loads((model / CONFIG_NAME).read_text())
    result = calibrate(model, 'market1501', data, fprs=(0.1, 0.05), img_size=IMG_SIZE, device='cpu')
    after = json.loads((model / CONFIG_NAME).read_text())
    assert after == dict(before, **{CALIBRATION_KEY: result}) and read_calibration(model) == result
    assert result['protocol'] == 'camera' and [p['fpr'] for p in result['points']] == [0.1, 0.05]
    assert all(0 <= p['heldout_fpr'] <= 1 and 0 <= p['heldout_tpr'] <= 1 for p in result['points'])
    assert result['num_identities'] + result['heldout']['num_identities'] == 6  # the test identities, split
    images = sorted(str(p) for p in (data / 'query').iterdir())[:2]
    answer = verify(model, *images, fpr=0.1, device='cpu')
    assert answer.threshold == result['points'][0]['threshold'] and answer.same == (answer.distance < answer.threshold)
    assert verify(model, images[0], images[0], fpr=0.1, device='cpu').distance == pytest.approx(0, abs=1e-5)


def test_verify_command_refuses_an_uncalibrated_model_in_one_line(checkpoint, tmp_path, capsys):
    data, folder = checkpoint
    model = _copy(folder, tmp_path / 'model')
    before = {f.name: f.read_bytes() for f in model.iterdir()}
    image = str(next((data / 'query').iterdir()))
    status = main(['verify', '--model', str(model), '--images', image, image, '--device', 'cpu'])
    err = capsys.readouterr().err
    assert status == 2 and err.count('\n') == 1 and 'carries no calibration' in err and 'ptl-timm calibrate' in err
    assert {f.name: f.read_bytes() for f in model.iterdir()} == before


@pytest.mark.slow
def test_calibrate_and_verify_commands_end_to_end(checkpoint, tmp_path, capsys):
    data, folder = checkpoint
    model = _copy(folder, tmp_path / 'model')
    assert main(['calibrate', '--model', str(model), '--dataset', 'market1501', '--data-root', str(data),
                 '--fprs', '0.1', '0.05', '--img-size', *map(str, IMG_SIZE), '--device', 'cpu', '--quiet',
                 '--json', str(tmp_path / 'c.json')]) == 0
    out = capsys.readouterr().out
    assert 'held-out FPR' in out and 'camera protocol' in out
    assert json.loads((tmp_path / 'c.json').read_text()) == read_calibration(model)
    a, b = sorted(str(p) for p in (data / 'query').iterdir())[:2]
    assert main(['verify', '--model', str(model), '--images', a, b, '--fpr', '0.1', '--device', 'cpu']) == 0
    assert 'threshold' in capsys.readouterr().out
    assert main(['verify', '--model', str(model), '--images', a, b, '--fpr', '0.02', '--device', 'cpu']) == 2
    assert 'not an operating point' in capsys.readouterr().err


def test_calibrate_refuses_a_model_it_cannot_write_to_before_reading_anything(tmp_path):
    with pytest.raises(InputError, match='checkpoint folder'):
        calibrate('hf-hub:ptl-timm/none', 'market1501', tmp_path / 'missing')
    with pytest.raises(CheckpointError, match='carries no calibration'):
        verify(tmp_path, 'a.jpg', 'b.jpg')


def test_the_calibration_set_keeps_training_and_test_people_apart_and_leaves_distractors_out(checkpoint):
    """Training pids are renumbered from 0 and test pids are the originals: equal numbers, different people.
    Market's distractor boxes (pid 0) show no labelled person: no pair of theirs is genuine (or known)."""
    data, folder = checkpoint
    dataset = build_dataset('market1501', data)
    test_ids = {pid: i for i, pid in enumerate(sorted({r.pid for r in dataset.query + dataset.gallery}), 1)}
    renumbered = [r._replace(pid=test_ids[r.pid]) for r in dataset.gallery]  # 1..6, as Market's: 1..5 in training too
    distractors = [r._replace(pid=0) for r in dataset.train[::8]]  # boxes of three other people
    queries = [r._replace(pid=test_ids[r.pid]) for r in dataset.query]
    mixed = ReIDDataset('market1501', str(data), dataset.train, queries, renumbered + distractors, distractor_pid=0)
    result = calibrate(folder, mixed, splits=('train', 'query', 'gallery'), fprs=(0.1,), holdout=0, write=False,
                       img_size=IMG_SIZE, device='cpu')
    people = [(False, r.pid) for r in mixed.query + renumbered] + [(True, r.pid) for r in dataset.train]
    pairs = list(itertools.combinations(people, 2))
    assert result['num_identities'] == 12 and result['num_distractors_left_out'] == len(distractors) == 3
    assert result['num_images'] == len(people)
    assert result['num_pairs']['impostor'] == sum(a != b for a, b in pairs)


def test_verify_refuses_a_calibration_measured_with_other_weights(checkpoint, tmp_path):
    """The config.json beside several weight files belongs to model.safetensors: another file's thresholds
    are never borrowed, nor stored there."""
    data, folder = checkpoint
    model = _copy(folder, tmp_path / 'model')
    calibrate(model, 'market1501', data, fprs=(0.1,), holdout=0, img_size=IMG_SIZE, device='cpu')
    torch.manual_seed(1)
    other = timm.create_model('ptl_net', num_classes=0, backbone='test_resnet', embed_dim=32, classifier_dims=(16,))
    save_pretrained(other, tmp_path / 'other')
    (model / 'other.safetensors').write_bytes((tmp_path / 'other' / WEIGHTS_NAME).read_bytes())
    image = str(next((data / 'query').iterdir()))
    assert verify(model, image, image, device='cpu').same
    with pytest.raises(CheckpointError, match='measured with other weights'):
        verify(model / 'other.safetensors', image, image, device='cpu')
    with pytest.raises(InputError, match='is not the model.safetensors'):
        calibrate(model / 'other.safetensors', 'market1501', data, fprs=(0.1,), img_size=IMG_SIZE, device='cpu')
    (model / WEIGHTS_NAME).write_bytes((model / 'other.safetensors').read_bytes())  # new weights, old config.json
    with pytest.raises(CheckpointError, match='calibrate these weights'):
        verify(model, image, image, device='cpu')
    older = {k: v for k, v in read_calibration(model).items() if k != 'weights_sha256'}
    write_calibration(model, older)
    with pytest.raises(CheckpointError, match='does not record the weights'):
        verify(model, image, image, device='cpu')


def test_publish_keeps_the_calibration_in_config_json_and_shows_it_in_the_card(checkpoint, tmp_path):
    from ptl_timm.hub.publish import README_NAME, publish
    _, folder = checkpoint
    model = _copy(folder, tmp_path / 'model')
    calibration = dict(
        format=1, metric='cosine', decision='same person when distance < threshold', protocol='camera',
        protocol_description='camera protocol: same identity and same camera is excluded', pairs='...',
        dataset='market1501', split='query+gallery', input_size=[3, *IMG_SIZE], flip=False, embedding_dim=32,
        num_images=24, num_identities=6, num_pairs=dict(genuine=30, impostor=240),
        points=[dict(fpr=0.01, threshold=0.3125, tpr=0.5, heldout_fpr=0.0125, heldout_tpr=0.4)],
        heldout=dict(num_images=24, num_identities=6, num_pairs=dict(genuine=30, impostor=240), seed=0))
    write_calibration(model, calibration)
    hub = publish(model, tmp_path / 'hub', tag='synth', progress=False).folder
    assert read_calibration(hub) == calibration
    card = (hub / README_NAME).read_text()
    assert '## Operating points' in card and '| 0.01 | 0.3125 | 50.00 | 1.25e-02 | 40.00 |' in card


def test_verify_names_a_missing_checkpoint_folder_as_missing(tmp_path, capsys):
    """A folder that does not exist is not "a model without calibration"."""
    status = main(['verify', '--model', str(tmp_path / 'runs' / 'none'), '--images', 'a.jpg', 'b.jpg'])
    err = capsys.readouterr().err
    assert status == 2 and err.count('\n') == 1 and 'does not exist' in err and 'calibration' not in err


@pytest.mark.slow
def test_a_calibration_published_to_the_hub_is_read_by_verify_through_its_hub_id(checkpoint, tmp_path, monkeypatch):
    """A calibrated folder as the Hub serves it (an offline Hub cache): `verify --model hf-hub:ORG/NAME` reads its
    calibration and decides as from the folder."""
    from hub_support import build_hub_cache, offline_hub
    data, folder = checkpoint
    model = _copy(folder, tmp_path / 'model')
    result = calibrate(model, 'market1501', data, fprs=(0.1,), img_size=IMG_SIZE, device='cpu')
    build_hub_cache(model, tmp_path / 'cache', 'someone/ptl_net.calibrated')
    offline_hub(monkeypatch, tmp_path / 'cache')
    assert read_calibration('hf-hub:someone/ptl_net.calibrated') == result
    images = sorted(str(p) for p in (data / 'query').iterdir())[:2]
    from_hub = verify('hf-hub:someone/ptl_net.calibrated', *images, fpr=0.1, device='cpu')
    assert from_hub == verify(model, *images, fpr=0.1, device='cpu')
    assert from_hub.threshold == result['points'][0]['threshold']
