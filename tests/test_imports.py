"""A package without cycles: the import graph between ptl_timm's parts, read from the source (imports
inside functions included), only points down the layers; the model family (layers + models) stands
alone; timm's private modules are imported in one named place; no package attribute hides a
sub-module; the weights manifest is package data, read the same way from a wheel and from the checkout."""
import ast
import importlib
import pkgutil
import re
import sys
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Set

import pytest

import ptl_timm

PACKAGE = Path(ptl_timm.__file__).parent
# Each part may import only parts of a lower rank (and itself). Data flows down:
# errors → utils → the model family (layers → models) → data / losses → hub (folders, published weights,
# publishing, export) → eval → index → the package's API (``import ptl_timm``) → engine → tools → cli.
RANKS = {
    'errors': 0, 'version': 0, 'utils': 1, 'layers': 2, 'models': 3, 'data': 4, 'losses': 4, 'hub': 5, 'eval': 6,
    'index': 7, 'api': 8, 'engine': 9, 'tools': 10, 'cli': 11, '__main__': 12,
}
MODEL_FAMILY = ('layers', 'models')
# the one module allowed timm's private modules, and what it takes from them (check these on a timm upgrade)
PRIVATE_TIMM = {'ptl_timm.hub.folder': {'timm.models._hub.save_config_for_hf'}}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix('').parts)
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob('*.py')}


def _part(module: str) -> str:
    return 'api' if module == 'ptl_timm' else module.split('.')[1]


def _imports(module: str) -> Set[str]:
    """Every ptl_timm module ``module`` imports, at the top or inside a function."""
    path = MODULES[module]
    package = module if path.name == '__init__.py' else module.rsplit('.', 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split('.')[0] == 'ptl_timm')
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ''
            if node.level:
                anchor = package.split('.')[:len(package.split('.')) - node.level + 1]
                base = '.'.join(anchor + ([node.module] if node.module else []))
            if base.split('.')[0] != 'ptl_timm':
                continue
            for alias in node.names:  # ``from ptl_timm.x import y`` imports the module x.y when there is one
                found.add(f'{base}.{alias.name}' if f'{base}.{alias.name}' in MODULES else base)
    return found - {module}


GRAPH = {module: _imports(module) for module in MODULES}


def _cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_every_part_has_a_rank():
    assert {_part(m) for m in MODULES} <= set(RANKS), 'a new part of the package needs a place in RANKS'


def test_parts_import_only_downwards():
    upward = sorted(f'{module} ({_part(module)}) imports {target} ({_part(target)})'
                    for module, targets in GRAPH.items() for target in targets
                    if RANKS[_part(target)] > RANKS[_part(module)]
                    or (RANKS[_part(target)] == RANKS[_part(module)] and _part(target) != _part(module)))
    assert not upward, 'imports against the layering:\n' + '\n'.join(upward)


def test_no_import_cycles_between_parts_or_modules():
    parts: Dict[str, Set[str]] = defaultdict(set)
    for module, targets in GRAPH.items():
        parts[_part(module)].update(_part(t) for t in targets if _part(t) != _part(module))
    assert _cycles(parts) == []
    # a module importing its own package's __init__ is how packages work, not a cycle
    modules = {m: {t for t in ts if not m.startswith(t + '.')} for m, ts in GRAPH.items()}
    assert _cycles(modules) == []


def test_the_model_family_stands_alone():
    """layers + models import nothing of the hub, data, evaluation, training or command line (errors aside):
    the model family can be read, and used with timm, on its own."""
    foreign = sorted(f'{module} imports {target}' for module, targets in GRAPH.items() if _part(module) in MODEL_FAMILY
                     for target in targets if _part(target) not in (*MODEL_FAMILY, 'errors'))
    assert not foreign, '\n'.join(foreign)


def _private_timm_imports(path: Path) -> Set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                 [f'{node.module}.{a.name}' for a in node.names] if isinstance(node, ast.ImportFrom) and node.module
                 else [])
        found.update(n for n in names if n.split('.')[0] == 'timm' and any(p.startswith('_') for p in n.split('.')))
    return found


def test_private_timm_imports_are_in_one_module_named_here():
    """timm's public API (timm.models: register_model, generate_default_cfgs, load_model_config_from_hf,
    load_state_dict_from_hf, get_model_args, ...) everywhere else, in the tests and benchmarks too."""
    repo = PACKAGE.parent
    files = {**{m: p for m, p in MODULES.items()}, **{str(p.relative_to(repo)): p for folder in ('tests', 'benchmarks',
             'examples') for p in (repo / folder).glob('*.py')}}
    found = {name: imports for name, path in files.items() if (imports := _private_timm_imports(path))}
    assert found == PRIVATE_TIMM


def test_the_graph_sees_imports_inside_functions():
    """The checker itself: an import inside a function counts (the bug it must catch);
    ``cli.build_parser`` imports the version inside the function."""
    assert 'ptl_timm.version' in GRAPH['ptl_timm.cli']
    assert any(_part(t) == 'utils' for t in GRAPH['ptl_timm.cli.options'])
    assert 'ptl_timm' in GRAPH['ptl_timm.tools.timm_script']
    assert _cycles({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}) == [['a', 'b', 'c']]


def test_only_the_layers_touch_the_cells_latent_state():
    """The BConv-Cell owns its state: other parts carry it through ``ptl_timm.layers``' snapshot /
    restore / eval-state functions, never through the attribute."""
    touching = {module for module, path in MODULES.items() for node in ast.walk(ast.parse(path.read_text(), str(path)))
                if isinstance(node, ast.Attribute) and node.attr == 'latent_state'}
    assert 'ptl_timm.layers.bconv_cell' in touching, 'the scan must see the cell itself use its state'
    outside = sorted(module for module in touching if _part(module) != 'layers')
    assert not outside, f'modules outside ptl_timm.layers use .latent_state: {outside}'


def test_no_package_attribute_shadows_a_submodule():
    """``import ptl_timm.engine.transfer`` must give the module, not a function of the same name."""
    shadowed = []
    for info in pkgutil.walk_packages(ptl_timm.__path__, 'ptl_timm.'):
        if info.name.endswith('__main__'):
            continue
        module = importlib.import_module(info.name)
        package = sys.modules[info.name.rsplit('.', 1)[0]]
        if getattr(package, info.name.rsplit('.', 1)[1]) is not module:
            shadowed.append(info.name)
    assert not shadowed, f'package attributes hide these modules: {shadowed}'


def test_the_architecture_page_lists_every_part_at_its_rank():
    """docs/architecture.md's table says what RANKS enforces (``import ptl_timm`` is the part 'api')."""
    page = PACKAGE.parent / 'docs' / 'architecture.md'
    if not page.is_file():
        pytest.skip('not a source checkout')
    listed = {}
    for rank, parts in re.findall(r'^\| (\d+) \| ([^|]+) \|', page.read_text(), re.MULTILINE):
        for part in re.findall(r'`([^`]+)`', parts):
            listed['api' if part == 'import ptl_timm' else part] = int(rank)
    assert listed == {part: rank for part, rank in RANKS.items() if part != '__main__'}


def test_manifest_is_package_data_found_through_importlib_resources(monkeypatch):
    from importlib import resources

    from ptl_timm.hub.pretrained import MANIFEST_ENV, default_manifest_path
    monkeypatch.delenv(MANIFEST_ENV, raising=False)
    path = default_manifest_path()
    assert path == Path(str(resources.files('ptl_timm') / 'weights_manifest.json')) and path.is_file()
    assert path.parent == PACKAGE
