"""timm's registry as this package uses it: which models it provides, and the one check of a model's
name and constructor arguments against it, made before anything is built, read or trained.

A model's constructor is the class its entrypoint is annotated to return (timm's and this package's
entrypoints all are, e.g. ``def ptl_net(...) -> ReIDNet``), so ``model_args`` are checked against that
class's signature without building anything. This matters because timm drops ``None`` arguments: the
YAML typo ``{backbone:resnet18}`` (no space) is a key ``'backbone:resnet18'`` with a null value, which
would otherwise build the default backbone without a word. Each value is checked against its
parameter's annotation too, for the simple types a config file holds (``check_arguments``): a model
argument is not coerced by anyone, so ``ptl: 'false'`` (a string, which is true) would build a PTL model.
"""
import collections.abc
import difflib
import functools
import inspect
import types
import typing
from typing import Any, Callable, Dict, List, Mapping, Optional, Union

import timm
from timm.models import build_model_with_cfg, model_entrypoint

from ptl_timm.errors import InputError

__all__ = [
    'list_models', 'GENERIC_MODELS', 'check_model_name', 'check_model_args', 'check_arguments', 'model_class',
    'fixed_args']

# Entrypoints that wrap a backbone chosen at call time (kwarg ``backbone``): no pretrained tag can name
# their weights.
GENERIC_MODELS = ('ptl_net', 'reid_net')
# constructor arguments whose value is itself a timm model name, and those whose value are its arguments
_MODEL_NAME_ARGS = ('backbone',)
_MODEL_ARGS_ARGS = {'backbone_args': 'backbone'}


def list_models(include_generic: bool = False) -> List[str]:
    """Names of the models ``import ptl_timm`` added to timm's registry, sorted."""
    names = [n for n in timm.list_models() if model_entrypoint(n).__module__.startswith('ptl_timm.')]
    return [n for n in names if include_generic or n not in GENERIC_MODELS]


def fixed_args(**model_args: Any) -> Callable[[Callable], Callable]:
    """Decorate an entrypoint that fixes some constructor arguments (``backbone='densenet161'``): it passes
    them under the caller's, and keeps them as ``entrypoint.model_args`` so that ``check_model_args``
    knows which backbone a ``backbone_args`` is for, which the class's signature cannot say."""
    def decorate(create: Callable) -> Callable:
        @functools.wraps(create)
        def entrypoint(pretrained: bool = False, **kwargs: Any) -> Any:
            return create(pretrained, **dict(model_args, **kwargs))
        entrypoint.model_args = dict(model_args)
        return entrypoint
    return decorate


def _closest(name: str, valid: List[str]) -> str:
    matches = difflib.get_close_matches(name, valid, n=3, cutoff=0.6)
    return f' (did you mean {" or ".join(repr(m) for m in matches)}?)' if matches else ''


def check_model_name(name: str, what: str = 'model') -> None:
    """Raise ``InputError`` unless ``name`` (``arch`` or ``arch.tag``) is in timm's registry, suggesting
    the closest registered names. (Whether a tag's weights exist is the hub's check, ``ptl_timm.hub.pretrained``.)"""
    if not isinstance(name, str) or not name:
        raise InputError(f'{what} must be a timm model name, got {name!r}')
    architecture = name.partition('.')[0]
    if not timm.is_model(architecture):
        ours = list_models(include_generic=True)
        hint = _closest(architecture, ours) or _closest(architecture, timm.list_models())
        raise InputError(f'{what} {name!r} is not a registered timm model{hint}; `ptl-timm info` lists the models of '
                         f'ptl_timm, timm.list_models() all of timm\'s')


def model_class(name: str) -> Optional[type]:
    """The class the registered model ``name`` builds (its entrypoint's return annotation), or None
    when the entrypoint does not say."""
    entrypoint: Callable = model_entrypoint(name.partition('.')[0])
    try:
        cls = typing.get_type_hints(entrypoint).get('return')
    except Exception:  # an annotation that does not resolve: the class is unknown, not an error
        return None
    return cls if inspect.isclass(cls) else None


def _factory_keywords() -> List[str]:
    """What ``timm.create_model`` and ``build_model_with_cfg`` take for themselves before the constructor
    (``pretrained_cfg_overlay``, ``features_only``, ...): valid in ``model_args`` though no class names them."""
    named = [p.name for f in (timm.create_model, build_model_with_cfg) for p in inspect.signature(f).parameters.values()
             if p.kind is p.POSITIONAL_OR_KEYWORD and p.name not in ('model_name', 'model_cls', 'variant')]
    return named + ['features_only', 'out_indices', 'feature_cls']


def _accepted(cls: type) -> Optional[List[str]]:
    """The keyword arguments ``cls`` takes (with timm's factory keywords), or None when it takes any
    (``**kwargs``)."""
    parameters = inspect.signature(cls.__init__).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return None
    own = [p.name for p in parameters if p.name != 'self' and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return own + [k for k in dict.fromkeys(_factory_keywords()) if k not in own]


_SEQUENCES = (list, tuple, collections.abc.Sequence)
_MAPPINGS = (dict, collections.abc.Mapping)


def _fits(value: Any, kind: Any) -> bool:
    """Whether ``value`` is of the type ``kind`` (an annotation) names, for bool, int, float (an int too),
    str, None and their unions, sequences (a list or tuple) and mappings; any other annotation (a class, a
    callable) takes every value: what this check cannot judge, the constructor does."""
    origin, args = typing.get_origin(kind) or (kind if kind in (list, tuple, dict) else None), typing.get_args(kind)
    if kind in (bool, str, type(None)):
        return isinstance(value, kind)
    if kind in (int, float):
        return isinstance(value, int if kind is int else (int, float)) and not isinstance(value, bool)
    if origin in (Union, types.UnionType):
        return any(_fits(value, arg) for arg in args)
    if origin is typing.Literal:
        return value in args
    if origin in _SEQUENCES:
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(map(_fits, value, args))
        return all(_fits(item, args[0]) for item in value) if args else True
    if origin in _MAPPINGS:
        return isinstance(value, Mapping)
    return True


def _annotations(function: Callable) -> Dict[str, Any]:
    try:
        return typing.get_type_hints(function)
    except Exception:  # an annotation that does not resolve: no type is known, not an error
        return {}


def check_arguments(function: Callable, values: Mapping[str, Any], where: str, owner: str) -> None:
    """Raise ``InputError`` naming the first of ``values`` whose value does not fit the annotation of
    ``function``'s parameter of that name (see ``_fits``; names it does not take are not checked here)."""
    hints = _annotations(function)
    for key, value in values.items():
        if key in hints and key != 'return' and not _fits(value, hints[key]):
            kind = inspect.formatannotation(hints[key])
            raise InputError(f"{where}: {key} must be {kind} (the type of {owner}'s {key}), got {value!r}")


def check_model_args(name: str, model_args: Mapping[str, Any], where: str = 'model_args') -> None:
    """Check the arguments ``model_args`` that build the registered model ``name``, naming the key at
    fault: every key is an argument of its constructor (closest ones suggested), no value is null
    (timm would drop it and build the default), each value fits its argument's annotation, and a
    ``backbone`` names a registered timm model (its ``backbone_args`` checked against it the same way)."""
    check_model_name(name)
    if not isinstance(model_args, Mapping):
        raise InputError(f'{where} must be a mapping of argument names to values, got {model_args!r}')
    cls = model_class(name)
    accepted = _accepted(cls) if cls is not None else None
    for key, value in model_args.items():
        if value is None:
            typo = (f"; in YAML '{{{key}}}' is a key with no value: write '{{{key.replace(':', ': ', 1)}}}' (a space "
                    f"after the colon)" if isinstance(key, str) and ':' in key else '')
            raise InputError(f'{where}: {key!r} has no value (null){typo}; give it a value or leave the key out')
        if accepted is not None and key not in accepted:
            raise InputError(f'{where}: {name} has no argument {key!r}{_closest(str(key), accepted)}; '
                             f'{cls.__name__} takes {", ".join(accepted)}')
    if cls is not None:
        check_arguments(cls.__init__, model_args, where, cls.__name__)
    for key in _MODEL_NAME_ARGS:
        if key in model_args:
            check_model_name(model_args[key], what=f'{where}: {key}')
    fixed = getattr(model_entrypoint(name.partition('.')[0]), 'model_args', {})
    for key, model_key in _MODEL_ARGS_ARGS.items():
        if key in model_args and accepted is not None and model_key in accepted:
            default = fixed.get(model_key, inspect.signature(cls.__init__).parameters[model_key].default)
            model = model_args.get(model_key, default)
            check_model_args(model, model_args[key], where=f'{where}: {key}')
