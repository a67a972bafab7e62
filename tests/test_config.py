"""One configuration path: every door resolves the same config, and bad values are refused early."""
import importlib
import types

import pytest
import yaml

from ptl_timm.cli import main
from ptl_timm.engine import DistillConfig, TrainConfig, TransferConfig, build_config, fine_tune, load_config
from ptl_timm.engine.config import RECIPES, DistillSection, TransferStep, check_config, config_to_yaml, field_rules
from ptl_timm.errors import ConfigError, PTLError

# (--set value(s), the key the error must name): bad types, unknown keys and choices, out-of-range values
BAD_VALUES = [
    (['epochs=abc'], 'epochs'),
    (['lr=abc'], 'lr'),
    (['lr=-0.1'], 'lr'),
    (['epochs=0'], 'epochs'),
    (['epochs=2.5'], 'epochs'),
    (['sampler=bogus'], 'sampler'),
    (['optimizer=adamm'], 'optimizer'),
    (['state_reset=sometimes'], 'state_reset'),
    (['reset_classifier=maybe'], 'reset_classifier'),
    (['eval_metric=manhattan'], 'eval_metric'),
    (['recipe=fast'], 'recipe'),
    (['lrr=0.1'], 'lrr'),
    (['pretrained=perhaps'], 'pretrained'),
    (['num_workers=-1'], 'num_workers'),
    (['img_size=[0, 64]'], 'img_size'),
    (['img_size=[64]'], 'img_size'),
    (['random_erasing=1.5'], 'random_erasing'),
    (['model_args=[1, 2]'], 'model_args'),
    (['test_datasets=5'], 'test_datasets'),
    (['sampler=pk', 'batch_size=10', 'num_instances=4'], 'num_instances'),
    (['model_args={state_mode: bogus}'], 'state_mode'),
    # model_args and dataset_args values against the annotation of the parameter they go to
    (["model_args={backbone: resnet18, ptl: 'false'}"], 'ptl must be'),
    (["model_args={embed_dim: '256'}"], 'embed_dim'),
    (['model_args={classifier_dims: [a, b]}'], 'classifier_dims'),
    (['dataset=msmt17', "dataset_args={include_val: 'false'}"], 'include_val'),
    (["dataset={name: msmt17, include_val: 'no'}"], 'include_val'),
    # model_args the trainer sets itself
    (['model_args={num_classes: 10}'], 'num_classes'),
    (['model_args={pretrained: true}'], 'pretrained'),
    # the task is the command's, or the config file's
    (['task=transfer'], 'task'),
    (['task=bogus'], 'task'),
    (['seed=-1'], 'seed'),
    (['seed=4294967296'], 'seed'),
    (['model=resnet18'], 'ptl_net'),
]


def _values(items):
    return {item.partition('=')[0]: yaml.safe_load(item.partition('=')[2]) for item in items}


@pytest.mark.parametrize('items,key', BAD_VALUES, ids=lambda v: v if isinstance(v, str) else '+'.join(v))
def test_bad_value_is_one_cli_line_naming_the_key_exit_2_and_nothing_written(items, key, tmp_path, capsys):
    output = tmp_path / 'run'
    argv = ['train', '--output', str(output), '--data-root', str(tmp_path / 'nowhere')]
    assert main([*argv, *(a for item in items for a in ('--set', item))]) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and err.startswith('ptl-timm train: error:') and key in err, err
    assert not output.exists()


@pytest.mark.parametrize('items,key', BAD_VALUES, ids=lambda v: v if isinstance(v, str) else '+'.join(v))
def test_bad_value_is_a_config_error_naming_the_key_in_python(items, key):
    with pytest.raises(ConfigError, match=key):
        TrainConfig(**_values(items))


def test_config_error_is_the_projects_user_error():
    assert issubclass(ConfigError, PTLError)


def test_error_lists_the_allowed_values_and_the_closest_name():
    with pytest.raises(ConfigError, match="one of sgd, adam, adamw, got 'adamm' \\(did you mean 'adam'\\?\\)"):
        TrainConfig(optimizer='adamm')
    with pytest.raises(ConfigError, match="unknown key 'epoch' \\(did you mean 'epochs'\\?\\)"):
        TrainConfig(epoch=3)


def test_values_are_coerced_where_unambiguous():
    cfg = TrainConfig(epochs='5', lr='1e-3', img_size=[64, 32], pretrained='false', max_steps_per_epoch=3.0)
    assert (cfg.epochs, cfg.lr, cfg.img_size, cfg.pretrained, cfg.max_steps_per_epoch) == (5, 0.001, (64, 32), False, 3)
    assert type(cfg.epochs) is int and type(cfg.lr) is float


def test_yaml_exponent_without_a_dot_is_a_number(tmp_path):
    """PyYAML reads ``1e-3`` as a string (YAML 1.1); the config reads it as the number it means."""
    path = tmp_path / 'run.yaml'
    path.write_text('lr: 1e-3\nepochs: "5"\n')
    cfg = build_config(TrainConfig, load_config(path), source=path)
    assert (cfg.lr, cfg.epochs) == (0.001, 5)


def test_error_from_a_config_file_names_the_file_and_the_key(tmp_path, capsys):
    path = tmp_path / 'bad.yaml'
    path.write_text('model: ptl_resnet50\nsampler: bogus\n')
    assert main(['train', '--config', str(path), '--output', str(tmp_path / 'run')]) == 2
    err = capsys.readouterr().err
    assert f'config file {path}: sampler must be one of random, pk' in err
    assert not (tmp_path / 'run').exists()


@pytest.mark.parametrize('name, text, position', [
    ('broken.yaml', 'epochs: 5\nmodel: [unclosed\n', 'line 3, column 1'),
    ('broken.json', '{"epochs": 5,\n "lr": }', 'line 2, column 8'),
])
def test_unreadable_config_file_is_one_line_naming_the_file_and_the_position(tmp_path, capsys, name, text, position):
    path = tmp_path / name
    path.write_text(text)
    assert main(['train', '--config', str(path)]) == 2
    err = capsys.readouterr().err
    assert f'config file {path} is not valid {name[-4:].upper()}' in err and position in err, err
    assert err.count('\n') == 1, err


def test_unparsable_override_is_one_line(capsys):
    assert main(['train', '--set', 'img_size=[1,', '--print-config']) == 2
    err = capsys.readouterr().err
    assert "override 'img_size=[1,'" in err and err.count('\n') == 1, err


def test_bad_value_inside_a_transfer_step_names_the_step(tmp_path, capsys):
    path = tmp_path / 'transfer.yaml'
    path.write_text('task: transfer\nsteps:\n  - {dataset: dukemtmc}\n  - {dataset: market1501, lr: abc}\n')
    assert main(['transfer', '--config', str(path), '--output', str(tmp_path / 'run')]) == 2
    assert f'config file {path}: transfer step 2: lr must be a number' in capsys.readouterr().err
    with pytest.raises(ConfigError, match="transfer step 1: sampler must be one of random, pk, got 'bogus'"):
        TransferConfig(steps=[{'dataset': 'market1501', 'sampler': 'bogus'}])
    with pytest.raises(ConfigError, match="the distill section: lam must be in \\[0, 1\\]"):
        TransferConfig(steps=[{'dataset': 'market1501'}], distill={'lam': 2})
    with pytest.raises(ConfigError, match='transfer step 1 has no dataset'):
        TransferConfig(steps=[{'lr': 0.1}])


def test_distill_lambda_out_of_range_through_the_cli(tmp_path, capsys):
    assert main(['distill', '--lam', '1.5', '--output', str(tmp_path / 'run')]) == 2
    assert 'lam must be in [0, 1], got 1.5' in capsys.readouterr().err
    with pytest.raises(ConfigError, match='lam'):
        DistillConfig(lam=-0.1)


def _printed_config(argv, capsys) -> dict:
    assert main(argv) == 0
    return yaml.safe_load(capsys.readouterr().out)


def test_python_api_and_cli_resolve_identical_mgn_configs(capsys):
    printed = _printed_config(['train', '--model', 'ptl_mgn', '--print-config'], capsys)
    assert printed == yaml.safe_load(config_to_yaml(TrainConfig(model='ptl_mgn')))
    for key, value in RECIPES['mgn'].items():
        assert printed[key] == (list(value) if isinstance(value, tuple) else value), key


def test_print_config_reads_no_data_and_writes_nothing(tmp_path, capsys):
    output = tmp_path / 'run'
    printed = _printed_config(['train', '--data-root', str(tmp_path / 'missing'), '--output', str(output),
                               '--img-size', '64', '32', '--set', 'lr=2e-2', '--print-config'], capsys)
    assert printed['task'] == 'finetune' and printed['img_size'] == [64, 32] and printed['lr'] == 0.02
    assert not output.exists()


def test_printed_config_reads_back_to_the_same_config(tmp_path, capsys):
    printed = _printed_config(['transfer', '--steps', 'dukemtmc', 'market1501', '--model', 'ptl_mgn',
                               '--print-config'], capsys)
    path = tmp_path / 'printed.yaml'
    path.write_text(yaml.safe_dump(printed))
    again = build_config(TransferConfig, load_config(path), source=path)
    assert yaml.safe_load(config_to_yaml(again)) == printed


def test_each_transfer_step_and_the_distill_section_gets_its_own_models_recipe():
    cfg = TransferConfig(model='ptl_resnet50', lr=0.02, steps=[
        {'dataset': 'dukemtmc'}, {'dataset': 'market1501', 'model': 'ptl_mgn'}], distill={'model': 'mgn_resnet50'})
    assert cfg.img_size == (256, 128)
    assert cfg.steps[0] == {'dataset': 'dukemtmc'}, 'the same model: nothing differs from the transfer config'
    assert isinstance(cfg.steps[0], TransferStep) and isinstance(cfg.distill, DistillSection)
    step = cfg.steps[1].config(cfg, output=cfg.output)
    assert step == TrainConfig(model='ptl_mgn', lr=0.02, dataset='market1501', output=cfg.output)
    assert cfg.distill['img_size'] == (384, 128) and cfg.distill['lam'] == 0.8


@pytest.mark.parametrize('section, key', [({'steps': [{'dataset': 'dukemtmc', 'output': 'elsewhere'}]}, 'output'),
                                          ({'steps': [{'dataset': 'dukemtmc'}], 'distill': {'teacher': 'x'}}, 'teacher')])
def test_a_section_cannot_set_what_the_transfer_sets(section, key):
    with pytest.raises(ConfigError, match=f'{key} is set by the transfer'):
        TransferConfig(**section)


def test_constructing_a_resumed_config_reads_nothing(tmp_path, monkeypatch):
    """Resume is the run layer's job: the config only records the wish and the values given."""
    monkeypatch.chdir(tmp_path)
    cfg = TrainConfig(output=str(tmp_path / 'no_run_here'), resume=True, epochs=3)
    assert cfg.resume and cfg.given_keys == {'output', 'resume', 'epochs'}
    assert cfg.lr == TrainConfig().lr, 'defaults, not a saved config'


def test_resume_reads_the_saved_config_in_the_run_layer(tmp_path):
    from ptl_timm.engine.run_folder import run_config, save_run_config
    save_run_config(TrainConfig(output=str(tmp_path), lr=0.5, epochs=2, img_size=(64, 32)))
    resumed = run_config(TrainConfig(output=str(tmp_path), resume=True, epochs=4))
    assert (resumed.lr, resumed.epochs, resumed.img_size, resumed.resume) == (0.5, 4, (64, 32), True)
    with pytest.raises(ConfigError, match='lr=0.1 \\(saved: 0.5\\)'):
        run_config(TrainConfig(output=str(tmp_path), resume=True, lr=0.1))


def test_a_resume_takes_fields_assigned_after_construction_as_given(tmp_path):
    from ptl_timm.engine.run_folder import run_config, save_run_config
    save_run_config(TrainConfig(output=str(tmp_path), lr=0.5, epochs=2, img_size=(64, 32)))
    cfg = TrainConfig(output=str(tmp_path), resume=True)
    cfg.epochs = 4
    assert run_config(cfg).epochs == 4
    cfg.lr = 0.1
    with pytest.raises(ConfigError, match='lr=0.1 \\(saved: 0.5\\)'):
        run_config(cfg)


def test_messages_name_the_file_the_folder_and_the_conflict(tmp_path):
    from ptl_timm.engine.run_folder import run_config
    with pytest.raises(ConfigError, match='is a folder, not a file'):
        load_config(tmp_path)
    with pytest.raises(ConfigError, match=f'config file {tmp_path / "x.yaml"}: unknown task .finetun.'):
        build_config(TrainConfig, {'task': 'finetun'}, source=tmp_path / 'x.yaml')
    with pytest.raises(ConfigError, match='resume continues the run .* and overwrite replaces it; pass one'):
        run_config(TrainConfig(output=str(tmp_path), resume=True, overwrite=True))


def test_training_entry_checks_a_config_changed_after_construction(tmp_path):
    cfg = TrainConfig(output=str(tmp_path / 'run'), data_root=str(tmp_path))
    cfg.sampler = 'bogus'
    with pytest.raises(ConfigError, match='sampler'):
        fine_tune(cfg)
    assert not (tmp_path / 'run').exists()
    cfg.sampler, cfg.epochs = 'pk', '3'
    assert check_config(cfg).epochs == 3


def test_choices_are_defined_once_where_they_live():
    from ptl_timm.eval.metrics import METRICS
    assert field_rules(TrainConfig)['eval_metric'][0] is METRICS


def test_each_field_carries_its_own_rules():
    rules = field_rules(DistillConfig)
    assert rules['optimizer'][0] == ('sgd', 'adam', 'adamw') and rules['lam'][1].text == 'in [0, 1]'
    assert 'lam' not in field_rules(TrainConfig), 'a rule lives on its field, not in a shared table'


@pytest.mark.parametrize('name', ['ptl_timm.engine.transfer', 'ptl_timm.engine.distill', 'ptl_timm.engine.trainer',
                                  'ptl_timm.engine.config'])
def test_engine_modules_are_not_shadowed_by_functions(name):
    module = importlib.import_module(name)
    assert isinstance(module, types.ModuleType)
    package, _, attr = name.rpartition('.')
    assert getattr(importlib.import_module(package), attr) is module


def test_query_expansion_and_re_ranking_defaults_are_defined_once():
    """The config, ``ptl-timm eval`` and the library functions share one set of values."""
    import inspect
    from ptl_timm.cli import build_parser
    from ptl_timm.eval.aqe import query_expansion
    from ptl_timm.eval.rerank import re_ranking
    args, cfg = build_parser().parse_args(['eval']), TrainConfig()
    rerank = inspect.signature(re_ranking).parameters
    aqe = inspect.signature(query_expansion).parameters
    assert (args.k1, args.k2, args.lambda_value) == (cfg.rerank_k1, cfg.rerank_k2, cfg.rerank_lambda) == tuple(
        rerank[name].default for name in ('k1', 'k2', 'lambda_value'))
    assert (args.aqe_k, args.aqe_alpha, args.aqe_times) == (cfg.aqe_k, cfg.aqe_alpha, cfg.aqe_times) == tuple(
        aqe[name].default for name in ('k', 'alpha', 'times'))


@pytest.mark.parametrize('name, text, where', [
    ('dup.yaml', 'lr: 0.1\nepochs: 3\nlr: 0.001\n', "duplicate key 'lr' (line 3"),
    ('dup_nested.yaml', 'model: ptl_net\nmodel_args:\n  backbone: resnet18\n  backbone: resnet50\n',
     "duplicate key 'backbone' (line 4"),
    ('dup_flow.yaml', 'model_args: {backbone: resnet18, backbone: resnet50}\n', "duplicate key 'backbone' (line 1"),
    ('dup.json', '{"lr": 0.1, "model_args": {"embed_dim": 64, "embed_dim": 32}}', "duplicate key 'embed_dim'"),
])
def test_duplicate_key_in_a_config_file_is_one_line_naming_the_file_and_the_key(tmp_path, capsys, name, text, where):
    path = tmp_path / name
    path.write_text(text)
    assert main(['train', '--config', str(path), '--print-config']) == 2
    err = capsys.readouterr().err
    assert f'config file {path}' in err and where in err and err.count('\n') == 1, err
    with pytest.raises(ConfigError, match='duplicate key'):
        load_config(path)


def test_duplicate_key_in_an_override_is_refused(capsys):
    assert main(['train', '--set', 'model_args={backbone: resnet18, backbone: resnet50}', '--print-config']) == 2
    err = capsys.readouterr().err
    assert "duplicate key 'backbone'" in err and err.count('\n') == 1, err


def test_yaml_merge_keys_are_not_duplicates(tmp_path):
    path = tmp_path / 'merge.yaml'
    path.write_text('model_args:\n  <<: {backbone: test_resnet, embed_dim: 64}\n  embed_dim: 32\n')
    assert load_config(path) == {'model_args': {'backbone': 'test_resnet', 'embed_dim': 32}}


def test_model_args_of_the_right_types_pass():
    cfg = TrainConfig(model='ptl_net', model_args=dict(
        backbone='test_resnet', embed_dim=64, classifier_dims=[], last_stride=1, drop_rate=0, ptl=False,
        backbone_args={'out_indices': (3, 4)}, pretrained_cfg_overlay={'file': 'x.safetensors'}))
    assert cfg.model_args['classifier_dims'] == [] and cfg.model_args['drop_rate'] == 0


def test_transfer_refuses_a_dataset_of_its_own(tmp_path, capsys):
    """Each step trains on its own dataset: a transfer-wide one would be printed, saved and never used."""
    with pytest.raises(SystemExit, match='2'):  # no such flag
        main(['transfer', '--steps', 'dukemtmc', '--dataset', 'msmt17', '--print-config'])
    assert 'unrecognized arguments: --dataset' in capsys.readouterr().err
    assert main(['transfer', '--steps', 'dukemtmc', '--set', 'dataset=msmt17', '--print-config']) == 2
    err = capsys.readouterr().err
    assert 'each step names its dataset' in err and '--steps' in err and err.count('\n') == 1, err
    with pytest.raises(ConfigError, match='each step names its dataset'):
        TransferConfig(dataset='msmt17', steps=[{'dataset': 'dukemtmc'}])
    saved = tmp_path / 'config.yaml'  # what every saved transfer config holds reads back
    saved.write_text(config_to_yaml(TransferConfig(steps=[{'dataset': 'dukemtmc'}])))
    assert build_config(TransferConfig, load_config(saved), source=saved).steps == [{'dataset': 'dukemtmc'}]


def test_task_of_another_command_in_a_python_config_is_refused():
    with pytest.raises(ConfigError, match="a 'transfer' config; run it with `ptl-timm transfer`"):
        build_config(TrainConfig, {'task': 'transfer', 'lr': 0.1})
    with pytest.raises(ConfigError, match="a 'finetune' config; run it with `ptl-timm train`"):
        build_config(DistillConfig, {'task': 'finetune'})


def test_print_config_is_a_config_file_without_run_control(tmp_path, capsys):
    """A config file made from --print-config must not delete the earlier run of whoever reuses it."""
    printed = _printed_config(['train', '--overwrite', '--print-config'], capsys)
    assert 'overwrite' not in printed and 'resume' not in printed
    path = tmp_path / 'run.yaml'
    for key in ('overwrite', 'resume'):
        path.write_text(f'lr: 0.1\n{key}: true\n')
        assert main(['train', '--config', str(path), '--print-config']) == 2
        err = capsys.readouterr().err
        assert f'config file {path}: {key}' in err and f'--{key}' in err and err.count('\n') == 1, err


def test_a_plain_timm_model_is_refused_naming_the_generic_models():
    with pytest.raises(ConfigError, match="'resnet18' is not a ReID model.*model=ptl_net.*backbone: resnet18"):
        TrainConfig(model='resnet18')
    with pytest.raises(ConfigError, match='not a ReID model'):
        DistillConfig(model='resnet18')
