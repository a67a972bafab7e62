"""`torchrun --nproc_per_node 2 -m ptl_timm train`: DDP on gloo, a distributed P×K sampler, and an
evaluation that ranks every query and gallery feature although each rank extracted only its shard."""
import json
import subprocess
import sys

import pytest
import yaml

from ptl_timm.engine import TrainConfig, build_config
from ptl_timm.data.specs import load_dataset
from ptl_timm.engine.distributed import DistContext
from ptl_timm.engine.evaluate import evaluate_split
from ptl_timm.hub import load_model

from engine_support import make_domain, tiny_config


@pytest.mark.slow
def test_two_process_gloo_training_evaluates_every_feature(tmp_path):
    domain = make_domain(tmp_path / 'synth', num_ids=12, images_per_id=5)  # odd counts: unequal shards
    values = tiny_config(tmp_path / 'out', domain, sampler='pk', batch_size=4, num_instances=2, epochs=1,
                         max_steps_per_epoch=2)
    config_file = tmp_path / 'ddp.yaml'
    config_file.write_text(yaml.safe_dump(values))
    command = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
               '-m', 'ptl_timm', 'train', '--config', str(config_file), '--quiet']
    run = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count('checkpoints:') == 1, run.stdout  # rank 0 reports, not every process

    record = json.loads((tmp_path / 'out' / 'metrics.jsonl').read_text().splitlines()[-1])
    reported = record['eval'][domain['label']]
    cfg = build_config(TrainConfig, values)
    dataset = load_dataset(domain, cfg.data_root, {})
    assert (reported['num_query'], reported['num_gallery']) == (len(dataset.query), len(dataset.gallery))
    # the gathered features are the single-process features of the saved model, in order
    single = evaluate_split(load_model(tmp_path / 'out' / 'last'), dataset, cfg, DistContext())
    for name in ('mAP', 'rank1', 'mINP'):
        assert reported[name] == pytest.approx(single[name], abs=1e-3), name
