"""Models by name: `hf:gpt2` -> a `transformers` model built from its config and its own init.

Nothing is downloaded and nothing is fetched from the network: the model is the config class's
defaults (`transformers.AutoConfig.for_model(...)`'s) with the keyword arguments on top
(`--model-arg n_layer=4`, `model.kwargs` in YAML), built by the model class's own `__init__`,
whose `post_init` runs the library's `_init_weights` (normal, std `initializer_range`, GPT-2's
residual projections scaled by depth, ...) with torch's generator, which `build.factory_model`
seeds with `--seed`.

A name is a model type (`gpt2`, `bert`, `llama`, `qwen2`, `vit`, `resnet`: any key of
`CONFIG_MAPPING`), built with the first head the library has for it, in HEADS order: a masked
language model (BERT's), a causal one (GPT-2's, Llama's), an image classifier (ViT's, ResNet's),
else the bare model; or a model class of `transformers` (`hf:BertForSequenceClassification`,
`hf:GPT2Model`), built from its own config class. The sizes are the library's defaults, which
for some types are large (`hf:llama` is a 6.7-billion-parameter Llama): `parameters` counts them
on the meta device before anything is allocated, for the memory pre-flight (actstat/plan.py).

A model built from a config is in training mode; it is handed over in eval mode (dropout off),
as `from_pretrained` hands one over, unless it holds batch normalisation, which at init only
normalises in training mode (its running statistics are still 0 and 1).

`transformers` is an optional extra (`pip install 'actstat[hf]'`), imported only here and only
when an `hf:` model is asked for. Every mistake is one line, a `ModelSourceError` (exit 2).
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import inspect
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from actstat.errors import ModelSourceError
from actstat.registry import closest

if TYPE_CHECKING:
    from torch import nn

PREFIX = "hf:"
INSTALL = "pip install 'actstat[hf]'"  # the extra that brings transformers
# the heads tried for a model type, in order: the first the library has is built
HEADS = ("MODEL_FOR_MASKED_LM_MAPPING_NAMES", "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES",
         "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES", "MODEL_MAPPING_NAMES")
# config keys every model type takes, besides its own fields (transformers 4 pops them from
# **kwargs in PretrainedConfig.__init__; 5 declares some as fields, some not)
GENERIC_KEYS = frozenset({
    "num_labels", "id2label", "label2id", "is_decoder", "add_cross_attention",
    "tie_word_embeddings", "attn_implementation", "output_attentions", "output_hidden_states",
    "use_cache", "pad_token_id", "bos_token_id", "eos_token_id", "dtype", "torch_dtype",
    "problem_type", "chunk_size_feed_forward", "return_dict"})
# the data an `hf:` model gets when the config names none (data.py draws them):
TOKEN_LENGTH = 128  # tokens per sample, or the model's context length where that is shorter
BATCH = 8  # samples: a transformer at its stock size keeps much per token for the backward pass
IMAGE_SIDE = 224  # an image model whose config has no image_size (ResNet): ImageNet's


@dataclass(frozen=True)
class Named:
    """An `hf:` name resolved: the model class to build and its config (not yet built)."""

    spec: str  # as written: hf:gpt2
    model_type: str  # gpt2
    class_name: str  # GPT2LMHeadModel
    config: Any  # the transformers config instance, the keyword arguments applied


@dataclass(frozen=True)
class Inputs:
    """What an `hf:` model takes, read from its config: token ids (`vocab`, at most `context`
    per sample) or images (`shape`: channels, height, width); `classes`: its classifier's
    outputs, if it has one."""

    source: str | None  # tokens, gaussian (images), or None: the config does not say
    vocab: int | None = None
    context: int | None = None  # the longest sequence its position embeddings take
    context_key: str | None = None  # the config key that sets it (n_positions)
    shape: tuple[int, ...] | None = None
    classes: int | None = None


def is_hf(spec: object) -> bool:
    """Whether a model spec names a `transformers` model (`hf:NAME`)."""
    return isinstance(spec, str) and spec.strip().startswith(PREFIX)


@contextlib.contextmanager
def _quiet(transformers: Any) -> Iterator[None]:
    """transformers' own warnings held back while a config is made and a model built (a small
    vocab_size leaves GPT-2's bos_token_id 50256 outside it: harmless here, where nothing is
    generated); its verbosity is put back after."""
    logging = transformers.utils.logging
    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)


def _transformers() -> Any:
    try:
        import transformers
    except ImportError as error:
        raise ModelSourceError(f"hf: models need the transformers library, which is not "
                               f"installed ({error.name or 'transformers'} not found): "
                               f"{INSTALL}") from None
    except Exception as error:  # installed but broken (a dependency of the wrong version)
        raise ModelSourceError(f"importing transformers for an hf: model raised "
                               f"{_describe(error)}") from None
    utils = getattr(transformers, "utils", None)
    if utils is not None and not utils.is_torch_available():
        import torch

        raise ModelSourceError(f"transformers {transformers.__version__} cannot use torch "
                               f"{torch.__version__} (its torch models are turned off): "
                               "install a transformers release that supports this torch")
    return transformers


def resolve(spec: str, kwargs: dict[str, Any] | None = None) -> Named:
    """The model class and config that `spec` (`hf:gpt2`) with `kwargs` names; a one-line
    ModelSourceError for a name the library does not know (with the closest names) or a key
    its config does not take (with the closest key)."""
    transformers = _transformers()
    from transformers.models.auto import modeling_auto
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING, CONFIG_MAPPING_NAMES

    text = spec.strip()
    name = text[len(PREFIX):].strip()
    if not name:
        raise ModelSourceError(f"'{text}' names no model: write hf:TYPE, such as hf:gpt2, "
                               "hf:bert or hf:vit")
    if "/" in name:  # a Hub repository (openai-community/gpt2): its files are not fetched
        raise ModelSourceError(f"'{text}' names a Hub repository, and actstat downloads nothing: "
                               "name the model type (hf:gpt2) and set its sizes with --model-arg, "
                               "or load the weights with from_pretrained in a factory "
                               "(--model FILE.py:FN)")
    types = list(CONFIG_MAPPING_NAMES)
    lowered = name.lower().replace("-", "_")
    if lowered in CONFIG_MAPPING_NAMES or name in CONFIG_MAPPING_NAMES:
        model_type = name if name in CONFIG_MAPPING_NAMES else lowered
        class_name = next((getattr(modeling_auto, head)[model_type] for head in HEADS
                           if model_type in getattr(modeling_auto, head, {})), None)
        if class_name is None:
            raise ModelSourceError(f"'{text}': transformers has a config for {model_type} but no "
                                   "PyTorch model class to build from it; name a model class "
                                   "(hf:CLASS)")
        if isinstance(class_name, (tuple, list)):  # some types list several classes
            class_name = class_name[0]
        config_class = CONFIG_MAPPING[model_type]
    else:
        model_class = getattr(transformers, name, None) if name.isidentifier() else None
        config_class = getattr(model_class, "config_class", None)
        model_type = getattr(config_class, "model_type", None)
        if not isinstance(model_class, type) or not model_type:
            raise ModelSourceError(_unknown(text, name, types, transformers))
        class_name = name
    if not hasattr(transformers, class_name):
        raise ModelSourceError(f"'{text}': transformers {transformers.__version__} has no "
                               f"class {class_name} to build")
    given = dict(kwargs or {})
    known = config_keys(config_class)
    for key in given:
        if key not in known:
            guess = closest(key, known)
            if guess:
                hint = f"did you mean '{guess}'?"
            else:
                keys = _main_keys(config_class, known)
                hint = f"its keys: {', '.join(keys[:8])}{', ...' if len(keys) > 8 else ''}"
            raise ModelSourceError(f"'{text}': {config_class.__name__} has no key '{key}' "
                                   f"({hint})")
    try:
        with _quiet(transformers):
            config = config_class(**given)
    except Exception as error:
        raise ModelSourceError(f"'{text}': {config_class.__name__}({_arguments(given)}) raised "
                               f"{_describe(error)}") from None
    return Named(text, model_type, class_name, config)


def _unknown(text: str, name: str, types: list[str], transformers: Any) -> str:
    """A name the library does not know, with the closest model types (or class names)."""
    pool = types
    if any(c.isupper() for c in name):  # looks like a class: GPT2LMHedModel
        pool = [n for n in dir(transformers)
                if n[:1].isupper() and (n.endswith("Model") or "For" in n)]
    matches = difflib.get_close_matches(name.lower() if pool is types else name, pool, n=3,
                                        cutoff=0.6)
    hint = f"did you mean {', '.join(f'hf:{m}' for m in matches)}? " if matches else ""
    return (f"'{text}': transformers knows no model type or class '{name}' ({hint}"
            f"model types are CONFIG_MAPPING's keys, such as gpt2, bert, llama, vit, resnet)")


def config_keys(config_class: type) -> list[str]:
    """Every keyword `config_class` takes: its own fields and parameters (and its bases'), the
    names its attribute_map aliases (hidden_size for GPT-2's n_embd), its defaults' keys, and
    the keys every config takes (GENERIC_KEYS)."""
    keys: set[str] = set(GENERIC_KEYS)
    if dataclasses.is_dataclass(config_class):
        keys.update(field.name for field in dataclasses.fields(config_class))
    for cls in config_class.__mro__:
        init = cls.__dict__.get("__init__")
        if init is None:
            continue
        try:
            parameters = inspect.signature(init).parameters.values()
        except (TypeError, ValueError):
            continue
        keys.update(p.name for p in parameters if p.name != "self"
                    and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL))
    keys.update(getattr(config_class, "attribute_map", {}) or {})
    # a config that needs arguments (a composite one) has its signature's alone
    with contextlib.suppress(Exception):
        keys.update(config_class().to_dict())
    return sorted(key for key in keys if not key.startswith("_"))


def _main_keys(config_class: type, known: list[str]) -> list[str]:
    """The model's own keys, for a message: its config class's parameters and aliases, not the
    keys every config takes."""
    own: list[str] = []
    init = config_class.__dict__.get("__init__")
    if init is not None:
        try:
            own = [p.name for p in inspect.signature(init).parameters.values()
                   if p.kind is p.KEYWORD_ONLY or (p.kind is p.POSITIONAL_OR_KEYWORD
                                                  and p.name != "self")]
        except (TypeError, ValueError):
            own = []
    base = {"transformers_version", "architectures", "output_hidden_states", "return_dict",
            "dtype", "chunk_size_feed_forward", "is_encoder_decoder", "id2label", "label2id",
            "problem_type"}
    own = [key for key in own if key not in base]
    return own or [key for key in known if key not in GENERIC_KEYS]


def inputs(named: Named) -> Inputs:
    """What the model takes, from its config: images where it has channels and no vocabulary
    (or is an image classifier), token ids where it has a vocabulary; the context length from
    `max_position_embeddings` (GPT-2's n_positions is an alias of it)."""
    from transformers.models.auto import modeling_auto

    config = named.config
    classes = getattr(config, "num_labels", None) if _classifier(named) else None
    vocab = _positive(getattr(config, "vocab_size", None))
    channels = _positive(getattr(config, "num_channels", None))
    images = getattr(modeling_auto, "MODEL_FOR_IMAGE_MAPPING_NAMES", {})
    if channels and (vocab is None or named.model_type in images):
        side = getattr(config, "image_size", None) or IMAGE_SIDE
        height, width = (side, side) if isinstance(side, int) else tuple(side)[:2]
        return Inputs("gaussian", shape=(channels, int(height), int(width)), classes=classes)
    if vocab:
        context = _positive(getattr(config, "max_position_embeddings", None))
        # the key a user sets it by: GPT-2's n_positions, whose alias is max_position_embeddings
        aliases = getattr(config, "attribute_map", None) or {}
        key = aliases.get("max_position_embeddings", "max_position_embeddings")
        return Inputs("tokens", vocab=vocab, context=context,
                      context_key=key if context else None, classes=classes)
    return Inputs(None, classes=classes)


def _classifier(named: Named) -> bool:
    return "ForImageClassification" in named.class_name or \
        "ForSequenceClassification" in named.class_name


def _positive(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


# the keys that size a model, in the order a message suggests them (those its config takes)
SIZE_KEYS = ("n_layer", "num_hidden_layers", "depths", "n_embd", "hidden_size", "hidden_sizes",
             "intermediate_size", "vocab_size")


def size_keys(named: Named) -> list[str]:
    """The keys of `named`'s config that set its size (layers, width, vocabulary)."""
    known = set(config_keys(type(named.config)))
    aliases = set(getattr(type(named.config), "attribute_map", {}) or {})  # GPT-2's hidden_size
    return [key for key in SIZE_KEYS if key in known and key not in aliases]


def parameters(named: Named) -> int:
    """How many parameters the model has, counted on the meta device: nothing is allocated, so
    a model too large for memory can be refused before it is built (tied weights count once)."""
    import torch

    transformers = _transformers()
    model_class = getattr(transformers, named.class_name)
    try:
        with torch.device("meta"), _quiet(transformers):
            model = model_class(named.config)
    except Exception as error:
        raise ModelSourceError(f"'{named.spec}': building {named.class_name} raised "
                               f"{_describe(error)}") from None
    return sum(p.numel() for p in model.parameters())


def build(spec: str, kwargs: dict[str, Any] | None = None) -> nn.Module:
    """The model `spec` names, built by its class from its config with the library's own init
    (torch's generator: seed it first), in eval mode unless it holds batch normalisation."""
    from torch import nn

    named = resolve(spec, kwargs)
    transformers = _transformers()
    model_class = getattr(transformers, named.class_name)
    try:
        with _quiet(transformers):
            model = model_class(named.config)
    except Exception as error:
        raise ModelSourceError(f"'{named.spec}': building {named.class_name} raised "
                               f"{_describe(error)}") from None
    batch_norms = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
    model.train(any(isinstance(m, batch_norms) for m in model.modules()))
    return model


def causal_lm(model: nn.Module) -> bool:
    """Whether `model` is a `transformers` causal language model (GPT2LMHeadModel,
    LlamaForCausalLM, ...): its logits at position t predict token t + 1. Known without
    importing transformers where the model is not one of its classes."""
    module = type(model).__module__ or ""
    if not module.startswith("transformers."):
        return False
    from transformers.models.auto import modeling_auto

    names = modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()
    classes = {n for entry in names for n in ((entry,) if isinstance(entry, str) else entry)}
    return type(model).__name__ in classes


def sequence_classes(model: nn.Module) -> int | None:
    """The labels of a `transformers` sequence classifier (BertForSequenceClassification): one
    per sample, `config.num_labels` of them; None for any other model."""
    if not (type(model).__module__ or "").startswith("transformers.") \
            or "ForSequenceClassification" not in type(model).__name__:
        return None
    return _positive(getattr(getattr(model, "config", None), "num_labels", None))


def _arguments(given: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value!r}" for key, value in given.items())


def _describe(error: BaseException) -> str:
    """`ValueError: ...`: the exception's type and its message, on one line."""
    message = " ".join(str(error).split())
    return type(error).__name__ + (f": {message}" if message else "")
