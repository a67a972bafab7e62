"""The fault sweep as tests: careless inputs and failures of the world end as one ``error:`` line (exit
2) before anything is read or written, and nothing is silently wrong: a typo in ``model_args``, a NaN
model, a 16-bit image, a full disk, a pickle with a payload, a bad device, name, number or tag."""
import argparse
import errno
import os
import re
import resource
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors
import timm
import torch
from PIL import Image

from ptl_timm.cli import main
from ptl_timm.data.loader import ImageDataset, read_image
from ptl_timm.engine import TrainConfig, build_config, parse_overrides
from ptl_timm.engine.checkpoint import load_train_state, save_checkpoint
from ptl_timm.engine.config import TASKS, ConfigError, field_rules
from ptl_timm.errors import CorruptFileError, InputError, NonFiniteError, OutputError, PTLError, reading, writing
from ptl_timm.eval.extract import FeatureExtractor
from ptl_timm.eval.features import FeatureSet, save_features
from ptl_timm.hub import WEIGHTS_NAME, load_model, set_preprocessing
from ptl_timm.models.registry import check_model_args
from ptl_timm.utils import atomic_path, resolve_device, to_rgb

SIZE = (32, 16)
TINY = dict(backbone='test_resnet', embed_dim=16, classifier_dims=(8,))
TINY_YAML = 'model_args={backbone: test_resnet, embed_dim: 16, classifier_dims: [8]}'


def _tiny(nan: bool = False) -> torch.nn.Module:
    model = timm.create_model('reid_net', num_classes=4, **TINY)
    set_preprocessing(model, SIZE)
    if nan:
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(float('nan'))
    return model


@pytest.fixture(scope='module')
def folders(tmp_path_factory):
    """A tiny model folder, its NaN twin, and a folder of two person crops."""
    root = tmp_path_factory.mktemp('faults')
    save_checkpoint(root / 'model', _tiny(), metadata={'ptl_timm_dataset': 'market1501'})
    save_checkpoint(root / 'nan', _tiny(nan=True), metadata={'ptl_timm_dataset': 'market1501'})
    (root / 'images').mkdir()
    for i in range(2):
        Image.new('RGB', SIZE[::-1], (40 * i, 90, 200)).save(root / 'images' / f'000{i}_c{i + 1}s1_000001_00.png')
    return root


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'Traceback' not in err, err
    return err


def _exit_code(argv) -> int:
    """``main``'s status, whether it returns it or argparse exits with it."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


# --- every argument that builds a model is checked before anything is read ---------------------------------------

def _train(tmp_path, *extra):
    """A ``train`` command whose data does not exist: an error about the model, not the data, shows the
    model was checked first."""
    return ['train', '--model', 'ptl_net', '--no-pretrained', '--data-root', str(tmp_path / 'no_data'),
            '--output', str(tmp_path / 'run'), '--quiet', *extra]


@pytest.mark.parametrize('override, expected', [
    # YAML reads {backbone:resnet18} as a key 'backbone:resnet18' with no value: timm dropped it, a ResNet-50 trained
    ('model_args={backbone:resnet18}', r"'backbone:resnet18' has no value.*write '\{backbone: resnet18\}'"),
    ('model_args={backbone: null}', r"'backbone' has no value"),
    ('model_args={backbone: test_resnet, embed_dims: 64}', r"no argument 'embed_dims' \(did you mean 'embed_dim'\?\)"),
    ('model_args={backbone: resnet18x}', r"backbone 'resnet18x' is not a registered timm model \(did you mean 'resnet18'"),
    ('model_args={backbone: test_resnet, backbone_args: {depth: 3}}', r"backbone_args: test_resnet has no argument 'depth'"),
])
def test_model_args_are_checked_against_the_model_before_the_data(tmp_path, capsys, override, expected):
    assert main(_train(tmp_path, '--set', override)) == 2
    assert re.search(expected, _one_line(capsys))
    assert not (tmp_path / 'run').exists()


def test_model_args_typo_is_refused_by_every_config_door():
    with pytest.raises(ConfigError, match='backbone:resnet18'):
        TrainConfig(model='ptl_net', model_args=parse_overrides(['x={backbone:resnet18}'])['x'])
    with pytest.raises(ConfigError, match='backbone:resnet18'):
        build_config(TrainConfig, {'model': 'ptl_net', 'model_args': {'backbone:resnet18': None}}, source='c.yaml')


def test_a_pretrained_model_without_a_backbone_builds_the_default_one(monkeypatch):
    """``pretrained`` with no backbone in ``model_args`` was ``KeyError: 'backbone'``."""
    import ptl_timm.engine.trainer as trainer
    built = {}
    monkeypatch.setattr(trainer, 'create_ptl', lambda **kwargs: built.update(kwargs))  # no ImageNet download
    trainer.build_model(TrainConfig(model='ptl_net', model_args={'embed_dim': 16}), 4, 'x')
    assert built == dict(pretrained=True, ptl=True, num_classes=4, embed_dim=16)


def test_model_args_of_a_timm_model_are_checked_against_its_class():
    with pytest.raises(InputError, match="resnet18 has no argument 'widht'"):
        check_model_args('resnet18', {'widht': 2})
    check_model_args('resnet18', {'drop_rate': 0.1, 'global_pool': 'avg'})


def test_backbone_args_are_checked_against_the_backbone_the_entrypoint_fixes():
    """``reid_densenet161`` fixes ``backbone='densenet161'`` in its entrypoint, not in its class's signature
    (whose default is resnet50): its ``backbone_args`` are DenseNet's, accepted, and a typo names DenseNet."""
    check_model_args('reid_densenet161', {'backbone_args': {'growth_rate': 8, 'block_config': (1, 1, 1, 1)}})
    with pytest.raises(InputError, match="densenet161 has no argument 'growth_rat' .*'growth_rate'"):
        check_model_args('ptl_densenet161', {'backbone_args': {'growth_rat': 8}})
    with pytest.raises(InputError, match="resnet18 has no argument 'growth_rate'"):
        check_model_args('reid_densenet161', {'backbone': 'resnet18', 'backbone_args': {'growth_rate': 8}})


def test_registered_entrypoints_keep_the_arguments_they_fix():
    """The hub layer re-registers each entrypoint with its tags; the model file's fixed arguments survive it."""
    model = timm.create_model('reid_densenet161', num_classes=3, backbone_args={'growth_rate': 8,
                                                                                'block_config': (1, 1, 1, 1)})
    assert type(model.backbone.features_conv0).__name__ == 'Conv2d' and model.side is None  # DenseNet's stem, no cells


def test_timms_factory_keywords_are_model_args_too():
    """``timm.create_model`` takes ``pretrained_cfg_overlay`` (how a local backbone file is loaded),
    ``features_only`` and friends for itself: no constructor names them, and they must not be refused."""
    overlay = {'pretrained_cfg_overlay': {'file': 'backbone.safetensors'}}
    check_model_args('reid_net', {'backbone': 'resnet18', **overlay, 'backbone_args': {'features_only': True}})
    check_model_args('resnet18', {'checkpoint_path': 'w.safetensors', 'out_indices': (1, 2)})
    with pytest.raises(InputError, match="no argument 'pretrained_cfg_overlays'"):
        check_model_args('reid_net', {'pretrained_cfg_overlays': {}})


@pytest.mark.parametrize('argv, expected', [
    (['train', '--model', 'ptl_resnt50'], r"model 'ptl_resnt50' is not a registered timm model \(did you mean "
                                          r"'ptl_resnet50'"),
    (['eval', '--model', 'ptl_resnt50'], r"'ptl_resnt50' is not a registered timm model \(did you mean 'ptl_resnet50'"),
    (['eval', '--model', 'hf-hub:../../etc'], r"Hub id '\.\./\.\./etc' is not a Hub repository name"),
    (['extract', '--model', 'hf-hub:org/../../x', '--output', 'f.npz'], 'is not a Hub repository name'),
])
def test_unknown_model_names_and_hub_ids_are_one_line_with_the_closest_names(tmp_path, capsys, argv, expected):
    argv = argv + (['--no-pretrained', '--output', str(tmp_path / 'run')] if argv[0] == 'train' else [])
    assert _exit_code(argv + ['--data-root', str(tmp_path / 'no_data'), '--dataset', 'market1501']) == 2
    assert re.search(expected, _one_line(capsys))


def test_python_doors_check_names_and_hub_ids_too():
    with pytest.raises(InputError, match="did you mean 'ptl_resnet50'"):
        load_model('ptl_resnt50')
    with pytest.raises(InputError, match='is not a Hub repository name'):
        FeatureExtractor('hf-hub:../../etc')
    with pytest.raises(InputError, match="backbone 'resnet18x'"):
        timm.create_model('ptl_net', backbone='resnet18x')


def test_config_json_without_pretrained_cfg_is_a_config_problem(folders, tmp_path):
    """It was blamed on the weights ("16 unexpected tensors")."""
    import json
    import shutil
    folder = shutil.copytree(folders / 'model', tmp_path / 'model')
    config = json.loads((folder / 'config.json').read_text())
    del config['pretrained_cfg']
    (folder / 'config.json').write_text(json.dumps(config))
    with pytest.raises(PTLError, match=r'config\.json is not a complete timm config\.json: it has no pretrained_cfg'):
        load_model(folder)


# --- devices ----------------------------------------------------------------------------------------------------

@pytest.fixture
def two_gpus_or_none(monkeypatch):
    """``set(n)``: the machine reports n CUDA devices, whatever it has."""
    def set_count(n: int) -> None:
        monkeypatch.setattr(torch.cuda, 'is_available', lambda: n > 0)
        monkeypatch.setattr(torch.cuda, 'device_count', lambda: n)
    return set_count


@pytest.mark.parametrize('device, gpus, expected', [
    ('gpu7', 0, "device 'gpu7' is not a device torch knows"),
    ('cuda', 0, "device 'cuda': this machine has no CUDA device"),
    ('cuda:9', 2, "device 'cuda:9': this machine has 2 CUDA device"),
    ('cuda:0', 0, "device 'cuda:0': this machine has no CUDA device"),
])
def test_devices_are_checked_where_the_string_enters(two_gpus_or_none, device, gpus, expected):
    two_gpus_or_none(gpus)
    with pytest.raises(InputError, match=expected):
        resolve_device(device)


def test_auto_and_cpu_resolve_and_cuda_is_the_ranks_gpu(two_gpus_or_none):
    two_gpus_or_none(0)
    assert resolve_device('auto') == resolve_device(None) == torch.device('cpu')
    two_gpus_or_none(2)
    assert resolve_device('cuda', local_rank=1) == torch.device('cuda:1') == resolve_device('auto', local_rank=1)


@pytest.mark.parametrize('command', ['eval', 'extract', 'search', 'actmap', 'train'])
def test_a_bad_device_is_one_line_on_every_command(tmp_path, capsys, command):
    assert _exit_code([command, '--device', 'gpu7']) == 2
    assert "device 'gpu7' is not a device torch knows" in _one_line(capsys)


@pytest.mark.parametrize('command', ['train', 'distill', 'transfer'])
def test_a_config_for_a_gpu_machine_prints_here_and_its_run_is_refused_before_writing(
        two_gpus_or_none, tmp_path, capsys, command):
    """``--print-config --device cuda`` writes a config for another machine; running it where there is no GPU
    is one line, exit 2, before the run folder exists."""
    two_gpus_or_none(0)
    extra = {'train': [], 'distill': ['--teacher', str(tmp_path / 'teacher')],
             'transfer': ['--steps', 'market1501']}[command]
    assert main([command, '--device', 'cuda', '--print-config', *extra]) == 0
    assert 'device: cuda\n' in capsys.readouterr().out
    assert _exit_code([command, '--device', 'cuda', '--output', str(tmp_path / 'run'), *extra]) == 2
    assert "device 'cuda': this machine has no CUDA device" in _one_line(capsys)
    assert not (tmp_path / 'run').exists()


def test_library_functions_refuse_a_bad_device(two_gpus_or_none, folders):
    two_gpus_or_none(0)
    from ptl_timm.eval.metrics import pairwise_distance_chunks
    with pytest.raises(InputError, match='no CUDA device'):
        FeatureExtractor(folders / 'model', device='cuda')
    with pytest.raises(InputError, match='gpu7'):
        next(pairwise_distance_chunks(torch.zeros(2, 4), torch.zeros(2, 4), device='gpu7'))


# --- numbers: every numeric flag of every command has its range --------------------------------------------------

def _subparsers(parser=None, prefix=''):
    """Every (sub-)command's parser by its name, nested ones (``index query``) included."""
    from ptl_timm.cli import build_parser
    parser = parser or build_parser()
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found[f'{prefix}{name}'] = sub
                found.update(_subparsers(sub, f'{prefix}{name} '))
    return found


def test_every_numeric_flag_of_every_command_has_a_range():
    """A flag typed ``int``/``float`` is checked by nothing: each one is an ``options.Number`` instead, or
    (train, distill, transfer) a config field whose metadata holds its range."""
    config_keys = {f for f in TrainConfig.__dataclass_fields__} | {'lam', 'teacher'}
    ranged = {key for cls in TASKS.values() for key, (_, rule) in field_rules(cls).items() if rule is not None}
    unchecked = []
    for name, parser in _subparsers().items():
        for action in parser._actions:
            if action.type in (int, float) and not (action.dest in config_keys and action.dest in {*ranged, 'seed'}):
                unchecked.append(f'{name} {action.option_strings[0]}')
    assert not unchecked, f'numeric flags without a range: {unchecked}'


@pytest.mark.parametrize('argv, flag', [
    (['eval', '--workers', '-1'], '--workers'), (['eval', '--batch-size', '0'], '--batch-size'),
    (['eval', '--img-size', '0', '0'], '--img-size'), (['extract', '--img-size', '64', '-2'], '--img-size'),
    (['search', '--top-k', '0'], '--top-k'), (['eval', '--lambda', 'nan'], '--lambda'),
    (['export', '--atol', 'nan'], '--atol'), (['eval', '--k1', '1.5'], '--k1'), (['actmap', '--columns', '0'], '--columns'),
    (['synth', '--num-ids', '0'], '--num-ids'), (['train', '--workers', '-1'], '--workers'),
])
def test_out_of_range_numbers_are_one_line_naming_the_flag(capsys, argv, flag):
    assert _exit_code(argv) == 2
    err = _one_line(capsys)
    assert f'argument {flag}' in err and 'must be' in err, err


def test_config_backed_numbers_are_checked_by_the_config(tmp_path, capsys):
    assert main(_train(tmp_path, '--set', TINY_YAML, '--epochs', '0')) == 2
    assert 'epochs must be >= 1, got 0' in _one_line(capsys)


# --- outputs -----------------------------------------------------------------------------------------------------

OUTPUT_FILES = [(['extract', '--folder', 'x'], 'out.safetensors'), (['export'], 'out.onnx'),
                (['search', '--gallery', 'x'], 'out.json'), (['actmap', '--folder', 'x'], 'out.png')]


@pytest.mark.parametrize('command, name', OUTPUT_FILES)
def test_an_output_file_naming_an_existing_folder_is_refused_before_any_work(folders, tmp_path, capsys, command, name):
    taken = tmp_path / name
    taken.mkdir()
    assert _exit_code([*command, '--model', str(folders / 'model'), '--output', str(taken)]) == 2
    assert f'cannot write {taken}: it is a folder; name a file' in _one_line(capsys)
    assert list(taken.iterdir()) == []


@pytest.mark.parametrize('command, name', OUTPUT_FILES)
def test_an_output_file_below_a_file_is_refused_before_any_work(folders, tmp_path, capsys, command, name):
    (tmp_path / 'afile').write_text('kept')
    assert _exit_code([*command, '--model', str(folders / 'model'), '--output', str(tmp_path / 'afile' / name)]) == 2
    assert 'a folder above it, is a file' in _one_line(capsys) and (tmp_path / 'afile').read_text() == 'kept'


@pytest.mark.parametrize('argv, endings', [
    (['extract', '--folder', 'x', '--output', 'f.txt'], '.safetensors or .npz'),
    (['search', '--gallery', 'x', '--output', 'r.txt'], '.json or .csv'),
    (['index', 'query', '--index', 'i', '--query', 'q.jpg', '--output', 'r.png'], '.json or .csv'),
])
def test_an_output_of_the_wrong_format_is_refused_as_the_flags_are_read(folders, capsys, argv, endings):
    assert _exit_code([*argv, '--model', str(folders / 'model')]) == 2
    err = _one_line(capsys)
    assert 'argument --output' in err and f'must end in {endings}' in err


@pytest.mark.parametrize('command', [['calibrate', '--dataset', 'market1501', '--data-root', 'x'],
                                     ['verify', '--images', 'a.jpg', 'b.jpg']])
def test_a_json_output_naming_a_folder_is_refused_before_the_calibration_is_touched(folders, tmp_path, capsys,
                                                                                     command):
    (tmp_path / 'taken.json').mkdir()
    config = (folders / 'model' / 'config.json').read_text()
    assert _exit_code([*command, '--model', str(folders / 'model'), '--json', str(tmp_path / 'taken.json')]) == 2
    assert 'argument --json' in _one_line(capsys) and (folders / 'model' / 'config.json').read_text() == config


def test_a_run_folder_naming_a_file_is_refused(tmp_path, capsys):
    (tmp_path / 'run').write_text('')
    assert _exit_code(['train', '--output', str(tmp_path / 'run')]) == 2
    assert 'is a file; name a folder' in _one_line(capsys)


def test_the_writer_refuses_a_folder_too(tmp_path):
    with pytest.raises(OutputError, match='it is a folder'):
        with atomic_path(tmp_path):
            pass


# --- numbers are checked where they are made ---------------------------------------------------------------------

def test_extracting_with_a_nan_model_is_refused_naming_how_many_images(folders, tmp_path, capsys):
    """It wrote all-NaN features without a word."""
    with pytest.raises(NonFiniteError, match='NaN/Inf embeddings for 2 of 2 images'):
        FeatureExtractor(folders / 'nan')(folders / 'images')
    output = tmp_path / 'f.safetensors'
    assert main(['extract', '--model', str(folders / 'nan'), '--folder', str(folders / 'images'), '--output',
                 str(output), '--workers', '0', '--quiet']) == 2
    assert 'NaN/Inf embeddings for 2 of 2 images' in _one_line(capsys)
    assert not output.exists()


def test_exporting_a_nan_model_is_refused_and_writes_nothing(folders, tmp_path, capsys):
    """It printed "max abs difference vs PyTorch nan" and exited 0 (nan > atol is false)."""
    pytest.importorskip('onnxscript')
    output = tmp_path / 'nan.onnx'
    assert main(['export', '--model', str(folders / 'nan'), '--output', str(output), '--quiet']) == 2
    assert 'NaN/Inf embeddings for a random batch' in _one_line(capsys)
    assert not output.exists()


@pytest.mark.parametrize('difference', [float('nan'), float('inf'), 1.0])
def test_an_export_failing_verification_never_reaches_the_output(folders, tmp_path, monkeypatch, difference):
    """The failed file stayed at --output; now an earlier export there is left as it was."""
    pytest.importorskip('onnxscript')
    pytest.importorskip('onnxruntime')
    import ptl_timm.hub.export as export

    monkeypatch.setattr(torch.onnx, 'export', lambda *args, **kwargs: Path(args[2]).write_bytes(b'new'))
    monkeypatch.setattr(export, 'compare_onnx', lambda *args: difference)
    output = tmp_path / 'm.onnx'
    output.write_bytes(b'old')
    with pytest.raises(RuntimeError, match='differs from PyTorch'):
        export.export_onnx(load_model(folders / 'model', num_classes=0), output)
    assert output.read_bytes() == b'old' and sorted(p.name for p in tmp_path.iterdir()) == ['m.onnx']


# --- images of every mode ----------------------------------------------------------------------------------------

def _twin():
    """An 8-bit RGB picture with structure, and its grey version."""
    rows, cols = np.mgrid[0:32, 0:16]
    rgb = np.stack([rows * 7, cols * 15, (rows + cols) * 5], axis=-1).clip(0, 255).astype(np.uint8)
    return Image.fromarray(rgb, 'RGB'), Image.fromarray(rgb, 'RGB').convert('L')


def _16bit(grey: Image.Image, mode: str) -> Image.Image:
    values = np.asarray(grey).astype(np.uint32) * 257
    dtype = '>u2' if mode == 'I;16B' else '<u2'
    return Image.frombytes(mode, grey.size, values.astype(dtype).tobytes())


# mode → (how to make it from the 8-bit twin, the file format that stores it, whether its twin is the grey one)
MODES = {
    '1': (lambda rgb, grey: grey.convert('1', dither=Image.Dither.NONE), 'png', None),
    'L': (lambda rgb, grey: grey, 'png', 'grey'),
    'P': (lambda rgb, grey: rgb.convert('P', palette=Image.Palette.ADAPTIVE, colors=256), 'png', 'rgb'),
    'PA': (lambda rgb, grey: rgb.convert('P', palette=Image.Palette.ADAPTIVE, colors=256).convert('PA'), None, 'rgb'),
    'LA': (lambda rgb, grey: grey.convert('LA'), 'png', 'grey'),
    'La': (lambda rgb, grey: grey.convert('LA').convert('La'), None, 'grey'),
    'RGBA': (lambda rgb, grey: rgb.convert('RGBA'), 'png', 'rgb'),
    'CMYK': (lambda rgb, grey: rgb.convert('CMYK'), 'tiff', 'rgb'),
    'I;16': (lambda rgb, grey: _16bit(grey, 'I;16'), 'png', 'grey'),
    'I;16B': (lambda rgb, grey: _16bit(grey, 'I;16B'), 'tiff', 'grey'),
    'I (16-bit values)': (lambda rgb, grey: Image.fromarray(np.asarray(grey).astype(np.int32) * 257, 'I'), 'tiff',
                          'grey'),
    'I (8-bit values)': (lambda rgb, grey: grey.convert('I'), 'tiff', 'grey'),
    'F (0..1)': (lambda rgb, grey: Image.fromarray(np.asarray(grey).astype(np.float32) / 255, 'F'), 'tiff', 'grey'),
    'F (0..255)': (lambda rgb, grey: grey.convert('F'), 'tiff', 'grey'),
}


@pytest.mark.parametrize('mode', MODES)
def test_every_image_mode_reads_like_its_8_bit_rgb_twin(tmp_path, mode):
    """A 16-bit PNG read as a flat white image (mean 255 against 204 for its 8-bit twin)."""
    make, file_format, twin = MODES[mode]
    rgb, grey = _twin()
    image = make(rgb, grey)
    assert image.mode == mode.split()[0]
    twin = rgb if twin == 'rgb' else grey.convert('RGB') if twin == 'grey' else image.convert('L').convert('RGB')
    reference = np.asarray(twin, dtype=np.float64)
    if file_format:
        path = tmp_path / f'image.{file_format}'
        image.save(path)
        with Image.open(path) as reread:
            assert reread.mode == image.mode or file_format == 'png' and mode.startswith('I'), reread.mode
        result = read_image(str(path))
    else:
        result = to_rgb(image)
    pixels = np.asarray(result, dtype=np.float64)
    assert result.mode == 'RGB' and pixels.shape == reference.shape
    assert abs(pixels.mean() - reference.mean()) < 1.5, (pixels.mean(), reference.mean())
    assert np.abs(pixels - reference).mean() < 3  # pixel by pixel, not just on average (the palette rounds)


@pytest.mark.parametrize('values, mode, expected', [
    (np.full((4, 4), 300.0, np.float32), 'F', 'range from 300 to 300'),
    (np.full((4, 4), np.nan, np.float32), 'F', 'NaN or Inf'),
    (np.full((4, 4), -5, np.int32), 'I', 'range from -5 to -5'),
    (np.full((4, 4), 70000, np.int32), 'I', 'outside the 0..65535'),
])
def test_images_that_no_rule_covers_are_refused_naming_the_file(tmp_path, capsys, values, mode, expected):
    path = tmp_path / '0001_c1s1_000001_00.tiff'
    Image.fromarray(values, mode).save(path)
    with pytest.raises(CorruptFileError, match=f'cannot read image {path}: .*{expected}'):
        read_image(str(path))


# --- the world's failures are one line ---------------------------------------------------------------------------

def _full_disk(*args, **kwargs):
    raise safetensors.SafetensorError('Error while serializing: I/O error: No space left on device (os error 28)')


def test_publish_on_a_full_disk_is_one_line_and_leaves_nothing(folders, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(safetensors.torch, 'save_file', _full_disk)
    output = tmp_path / 'hub'
    assert main(['publish', '--model', str(folders / 'model'), '--output', str(output), '--tag', 'mkt', '--quiet']) == 2
    assert f'cannot write {output / WEIGHTS_NAME}: no space left on the device' in _one_line(capsys)
    assert list(tmp_path.iterdir()) == []


def test_extract_on_a_full_disk_is_one_line(folders, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(safetensors.torch, 'save_file', _full_disk)
    output = tmp_path / 'f.safetensors'
    assert main(['extract', '--model', str(folders / 'model'), '--folder', str(folders / 'images'), '--output',
                 str(output), '--workers', '0', '--quiet']) == 2
    assert f'cannot write {output}: no space left on the device' in _one_line(capsys)
    assert list(tmp_path.iterdir()) == []


def test_writing_turns_safetensors_io_errors_into_output_errors_and_keeps_others(tmp_path):
    with pytest.raises(OutputError, match='file-size limit') as error:
        with writing(tmp_path / 'x'):
            raise safetensors.SafetensorError('Error while serializing: I/O error: File too large (os error 27)')
    assert error.value.errno == errno.EFBIG
    with pytest.raises(safetensors.SafetensorError):  # not the world's fault: a bug keeps its traceback
        with writing(tmp_path / 'x'):
            raise safetensors.SafetensorError('Error while serializing: invalid tensor')


@pytest.mark.slow
def test_a_real_file_size_limit_during_publish_is_one_line(folders, tmp_path):
    """The full disk of the sweep, through the interpreter: writes beyond RLIMIT_FSIZE fail with EFBIG."""
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))
    env = {k: v for k, v in os.environ.items() if k != 'PTL_TIMM_DEBUG'}
    result = subprocess.run(
        [sys.executable, '-m', 'ptl_timm', 'publish', '--model', str(folders / 'model'), '--output',
         str(tmp_path / 'hub'), '--tag', 'mkt', '--quiet'], capture_output=True, text=True, preexec_fn=limit, env=env)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count('\n') == 1 and 'cannot write' in result.stderr and 'Traceback' not in result.stderr
    assert not (tmp_path / 'hub').exists()


def test_training_checks_free_space_for_a_checkpoint_before_the_first_epoch(tmp_path, monkeypatch, capsys):
    """It found the full disk after a whole epoch."""
    import collections
    import shutil
    from engine_support import IMG_SIZE, make_domain

    spec = make_domain(tmp_path / 'data')
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, 'disk_usage', lambda p: collections.namedtuple('U', 'total used free')(
        *real(p)[:2], 1000))
    run = tmp_path / 'run'
    argv = ['train', '--model', 'ptl_net', '--set', TINY_YAML, '--no-pretrained', '--data-root',
            spec['root'], '--img-size', *map(str, IMG_SIZE), '--batch-size', '4', '--workers', '0', '--output',
            str(run), '--quiet']
    assert main(argv) == 2
    err = _one_line(capsys)
    assert f'cannot write {run}: a checkpoint' in err and 'only 0 MiB are free' in err, err
    assert not run.exists()


def test_checkpoint_size_estimate_covers_a_real_checkpoint(tmp_path):
    from ptl_timm.engine.trainer import _checkpoint_bytes
    model = _tiny()
    for optimizer in ('sgd', 'adam'):
        cfg = TrainConfig(model='reid_net', model_args=TINY, optimizer=optimizer)
        optim = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9) if optimizer == 'sgd' else \
            torch.optim.Adam(model.parameters())
        model(torch.randn(2, 3, *SIZE)).sum().backward()
        optim.step()
        save_checkpoint(tmp_path / optimizer, model, dict(optimizer=optim.state_dict()))
        actual = sum(f.stat().st_size for f in (tmp_path / optimizer).iterdir())
        assert 0.9 * actual <= _checkpoint_bytes(cfg, model) <= 1.2 * actual, (optimizer, actual)


class _Payload:
    """What a malicious ``train_state.pt`` holds: unpickling it would run a command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'touch {self.marker}',)


def test_a_train_state_that_is_not_weights_only_is_refused_for_safety(tmp_path, capsys):
    marker = tmp_path / 'payload-ran'
    save_checkpoint(tmp_path / 'run' / 'last', _tiny(), dict(epoch=1, payload=_Payload(marker)))
    with pytest.raises(CorruptFileError) as error:
        load_train_state(tmp_path / 'run' / 'last')
    message = str(error.value)
    assert 'not a weights-only checkpoint (refused for safety' in message and 'train_state.pt' in message
    assert 'weights_only=False' not in message and error.value.__cause__ is None  # torch's advice is the unsafe way
    assert not marker.exists()


def test_publish_refuses_a_train_state_that_is_not_weights_only(tmp_path, capsys):
    marker = tmp_path / 'payload-ran'
    save_checkpoint(tmp_path / 'ckpt', _tiny(), dict(epoch=1, payload=_Payload(marker)),
                    metadata={'ptl_timm_dataset': 'mkt'})
    assert main(['publish', '--model', str(tmp_path / 'ckpt'), '--output', str(tmp_path / 'hub'), '--quiet']) == 2
    assert 'not a weights-only checkpoint (refused for safety' in _one_line(capsys)
    assert not marker.exists() and not (tmp_path / 'hub').exists()


def test_reading_says_what_a_truncated_torch_file_is(tmp_path):
    path = tmp_path / 'train_state.pt'
    torch.save({'a': torch.zeros(100)}, path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CorruptFileError, match=f'cannot read training state {path}'):
        with reading(path, 'training state'):
            torch.load(path, weights_only=True)


def test_a_user_error_in_a_loader_worker_reaches_the_user_as_its_one_line(folders, tmp_path):
    """The worker's whole traceback was the message ("Caught CorruptImageError in DataLoader worker...")."""
    from ptl_timm.data.datasets import ReIDRecord
    from ptl_timm.data.loader import CorruptImageError
    bad = tmp_path / 'bad.jpg'
    bad.write_bytes(b'not an image')
    loader = torch.utils.data.DataLoader(ImageDataset([ReIDRecord(str(bad), 0, 0)]), num_workers=1)
    with pytest.raises(CorruptImageError) as error:
        next(iter(loader))
    assert str(error.value).startswith(f'cannot decode image {bad}') and '\n' not in str(error.value)


# --- messages say the real cause ---------------------------------------------------------------------------------

def test_an_empty_query_set_is_said_to_be_empty(tmp_path, capsys):
    """It read "0 query and 0 gallery images have no identity or no camera"."""
    path = tmp_path / 'f.safetensors'
    empty = FeatureSet(torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64), [])
    full = FeatureSet(torch.randn(2, 4), torch.arange(2), torch.zeros(2, dtype=torch.int64), ['a', 'b'])
    save_features({'query': empty, 'gallery': full}, path)
    assert main(['eval', '--features', str(path)]) == 2
    assert 'the query set is empty (0 images)' in _one_line(capsys)


@pytest.mark.parametrize('tag', ['../../evil', 'a/b', 'x.y', 'with space'])
def test_publish_refuses_tags_with_path_characters_before_reading_anything(tmp_path, capsys, tag):
    """``--tag ../../evil`` was refused for "no dataset to name the tag after"."""
    output = tmp_path / 'hub'
    assert main(['publish', '--model', str(tmp_path / 'missing'), '--output', str(output), '--tag', tag]) == 2
    assert f"the tag given {tag!r} has characters a pretrained tag cannot have" in _one_line(capsys)
    assert not output.exists()


def test_publish_refuses_a_recorded_dataset_that_cannot_be_a_tag(tmp_path, capsys):
    save_checkpoint(tmp_path / 'ckpt', _tiny(), metadata={'ptl_timm_dataset': 'market1501+dukemtmc'})
    assert main(['publish', '--model', str(tmp_path / 'ckpt'), '--output', str(tmp_path / 'hub'), '--quiet']) == 2
    assert "'market1501+dukemtmc' has characters a pretrained tag cannot have" in _one_line(capsys)
