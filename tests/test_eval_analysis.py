"""TPR at FPR against a direct scan of every threshold, and the per-camera-pair mAP table on a hand-made case."""
import numpy as np
import pytest
import torch

from ptl_timm.eval import camera_pair_map, evaluate_rank, tpr_at_fpr


def direct_tpr_at_fpr(dist, q_pids, g_pids, q_cams, g_cams, fpr):
    """Best TPR over every threshold t (accept distance < t) whose FPR is at most ``fpr``."""
    same = q_pids[:, None] == g_pids[None]
    genuine = dist[same & (q_cams[:, None] != g_cams[None])]
    impostor = dist[~same]
    best = 0.0
    for t in np.concatenate([np.unique(dist), [np.inf]]):
        if (impostor < t).mean() <= fpr:
            best = max(best, (genuine < t).mean())
    return best


def random_split(seed, num_q=30, num_g=120, ids=12, cams=3, dim=8):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(ids, dim))
    q_pids, g_pids = rng.integers(0, ids, num_q), rng.integers(0, ids, num_g)
    q = centres[q_pids] + 0.8 * rng.normal(size=(num_q, dim))
    g = centres[g_pids] + 0.8 * rng.normal(size=(num_g, dim))
    return q, g, q_pids, g_pids, rng.integers(0, cams, num_q), rng.integers(0, cams, num_g)


@pytest.mark.parametrize('seed', [0, 1])
@pytest.mark.parametrize('chunk_size', [4, 256])
def test_tpr_at_fpr_matches_a_direct_threshold_scan(seed, chunk_size):
    q, g, q_pids, g_pids, q_cams, g_cams = random_split(seed)
    fprs = (1e-3, 1e-2, 0.05, 0.3)
    got = tpr_at_fpr(q, g, q_pids, g_pids, q_cams, g_cams, fprs=fprs, metric='euclidean', chunk_size=chunk_size,
                     device='cpu')
    diff = q[:, None] - g[None]
    dist = (diff ** 2).sum(-1).astype(np.float32)
    for f in fprs:
        assert got[f] == pytest.approx(direct_tpr_at_fpr(dist, q_pids, g_pids, q_cams, g_cams, f), abs=1e-12)
    assert got[1e-3] <= got[1e-2] <= got[0.05] <= got[0.3]


def test_tpr_at_fpr_rejects_rates_outside_zero_one():
    q, g, q_pids, g_pids, q_cams, g_cams = random_split(0)
    with pytest.raises(ValueError, match='false-positive rates'):
        tpr_at_fpr(q, g, q_pids, g_pids, q_cams, g_cams, fprs=(0.0,))


def test_camera_pair_table_on_a_hand_made_case():
    """Identities 0 and 1, cameras 0 and 1 in the query, 0, 1, 2 in the gallery (1-d features).

    Query (pid 0, cam 0) at 0.0 and query (pid 1, cam 1) at 10.0. Gallery camera 1: pid 0 at 0.1 and
    pid 1 at 0.05 (a confuser closer than the match), camera 2: pid 0 at 0.2, camera 0: pid 1 at 10.1.
    """
    q = np.array([[1.0, 0.0], [1.0, 10.0]])
    q_pids, q_cams = np.array([0, 1]), np.array([0, 1])
    g = np.array([[1.0, 0.1], [1.0, 0.05], [1.0, 0.2], [1.0, 10.1], [1.0, 10.05]])
    g_pids, g_cams = np.array([0, 1, 0, 1, 1]), np.array([1, 1, 2, 0, 1])
    table = camera_pair_map(q, g, q_pids, g_pids, q_cams, g_cams, metric='euclidean', device='cpu')
    assert list(table['query_cameras']) == [0, 1] and list(table['gallery_cameras']) == [0, 1, 2]
    expected = np.array([
        [np.nan, 0.5, 1.0],   # query cam 0 (pid 0): in cam 1 the pid-1 confuser ranks first; in cam 2 alone
        [1.0, np.nan, np.nan],  # query cam 1 (pid 1): its match in cam 0; cam 1 is its own; cam 2 has no pid 1
    ])
    np.testing.assert_allclose(table['map'], expected)
    np.testing.assert_array_equal(table['num_valid_queries'], [[0, 1, 1], [1, 0, 0]])


def test_camera_pair_table_cells_are_sub_gallery_evaluations():
    """Cell (a, b) is the mAP of camera a's queries ranked against camera b's gallery alone; its count
    is the queries of a whose identity appears in b (b != a)."""
    q, g, q_pids, g_pids, q_cams, g_cams = random_split(3)
    table = camera_pair_map(q, g, q_pids, g_pids, q_cams, g_cams, device='cpu')
    for i, a in enumerate(table['query_cameras']):
        for j, b in enumerate(table['gallery_cameras']):
            queries = np.flatnonzero(q_cams == a)
            gallery = np.flatnonzero(g_cams == b)
            expected_count = 0 if a == b else int(np.isin(q_pids[queries], g_pids[gallery]).sum())
            assert table['num_valid_queries'][i, j] == expected_count
            if expected_count:
                sub = evaluate_rank(q[queries], g[gallery], q_pids[queries], g_pids[gallery], q_cams[queries],
                                    g_cams[gallery], device='cpu')
                assert table['map'][i, j] == pytest.approx(sub['mAP'])
            else:
                assert np.isnan(table['map'][i, j])


@pytest.fixture
def feature_file(tmp_path):
    """Saved query/gallery features with identities and cameras, as ``ptl-timm extract`` writes them."""
    from ptl_timm.eval.features import FeatureSet, save_features
    q, g, q_pids, g_pids, q_cams, g_cams = random_split(5)
    sets = {name: FeatureSet(torch.tensor(f, dtype=torch.float32), torch.tensor(p), torch.tensor(c), [''] * len(p))
            for name, f, p, c in (('query', q, q_pids, q_cams), ('gallery', g, g_pids, g_cams))}
    return save_features(sets, tmp_path / 'feats.safetensors'), sets


def run_eval(tmp_path, features, *flags):
    import json
    from ptl_timm.cli import main
    assert main(['eval', '--features', str(features), '--device', 'cpu', '--quiet', '--json',
                 str(tmp_path / 'm.json'), *flags]) == 0
    return json.loads((tmp_path / 'm.json').read_text())


def test_cli_aqe_rerank_parameters_roc_and_camera_table_are_the_library_results(tmp_path, feature_file):
    from ptl_timm.eval import evaluate_distmat, query_expansion, re_ranking
    path, sets = feature_file
    q, g = sets['query'], sets['gallery']
    labels = (q.pids, g.pids, q.camids, g.camids)
    got = run_eval(tmp_path, path, '--aqe', '--aqe-k', '4', '--aqe-alpha', '2', '--roc', '--camera-pairs')
    q_exp, g_exp = query_expansion(q.feats, g.feats, k=4, alpha=2.0)
    assert got['mAP'] == pytest.approx(100 * evaluate_rank(q_exp, g_exp, *labels, device='cpu')['mAP'])
    expected_roc = tpr_at_fpr(q_exp, g_exp, *labels, device='cpu')
    assert got['tpr_at_fpr'] == pytest.approx({f'{f:.0e}': 100 * v for f, v in expected_roc.items()})
    table = camera_pair_map(q_exp, g_exp, *labels, device='cpu')
    expected_table = [[None if np.isnan(v) else pytest.approx(100 * v) for v in row] for row in table['map']]
    assert got['camera_pairs']['mAP'] == expected_table

    got = run_eval(tmp_path, path, '--rerank', '--k1', '8', '--k2', '3', '--lambda', '0.5')
    reranked = re_ranking(q.feats, g.feats, k1=8, k2=3, lambda_value=0.5, device='cpu')
    assert got['mAP'] == pytest.approx(100 * evaluate_distmat(reranked, *labels, device='cpu')['mAP'])
    assert got['rerank_args'] == dict(k1=8, k2=3, lambda_value=0.5)
    default = run_eval(tmp_path, path, '--rerank')
    assert default['mAP'] != pytest.approx(got['mAP'])


def test_cli_summary_names_every_post_processing_it_applied(tmp_path, feature_file, capsys):
    path, _ = feature_file
    got = run_eval(tmp_path, path, '--aqe', '--rerank', '--k1', '8')
    summary = capsys.readouterr().out.splitlines()[0]
    expected = ['average query expansion (k=10, alpha=3.0, 1x)', 'k-reciprocal re-ranking (k1=8, k2=6, lambda=0.3)']
    assert got['post_processing'] == expected and summary.endswith(f'gallery; {", ".join(expected)})')
    run_eval(tmp_path, path)
    assert capsys.readouterr().out.splitlines()[0].endswith('gallery; no post-processing)')


def test_cli_camera_table_names_cameras_as_the_file_names_do_and_says_what_a_pair_is(tmp_path, feature_file, capsys):
    path, sets = feature_file
    got = run_eval(tmp_path, path, '--camera-pairs')
    lines = capsys.readouterr().out.splitlines()
    cameras = [f'c{c + 1}' for c in sorted(set(sets['gallery'].camids.tolist()))]  # camid 0 is c1 in file names
    assert got['camera_pairs']['gallery_cameras'] == cameras
    header = next(i for i, line in enumerate(lines) if line.startswith('q\\g'))  # after the summary and protocol
    assert lines[header].split() == ['q\\g', *cameras] and lines[header + 1].split()[0] == 'c1'
    assert lines[-1].startswith("a pair's mAP ranks the queries of camera a against the gallery images of camera b")
