"""params.yaml: one loader, one schema. Unknown or ill-typed keys are errors naming key and line.

Each pipeline step reads only its own section; dvc.yaml lists the keys each stage depends on, so a
change reruns only what depends on it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from tasks.errors import InputError


@dataclass(frozen=True)
class Key:
    kind: type | tuple[type, ...]
    default: Any
    help: str
    check: Callable[[Any], bool] | None = None
    expected: str = ""


def _positive(v) -> bool:
    return v > 0


def _non_negative(v) -> bool:
    return v >= 0


def _non_empty(v) -> bool:
    return bool(v.strip())


def _one_of(*choices):
    return lambda v: v in choices


def _between(lo, hi):
    return lambda v: lo <= v <= hi


SCHEMA: dict[str, dict[str, Key]] = {
    "data": {
        "on_error": Key(str, "quarantine", "what a bad label line or image does: fail | quarantine",
                        _one_of("fail", "quarantine"), "'fail' or 'quarantine'"),
    },
    "model": {
        "name": Key(str, "TrafficCLIP-Tiny", "open_clip architecture name (ours in tasks/model_configs)"),
        "pretrained": Key(str, "", "open_clip pretrained tag, a local checkpoint folder or file, or '' for random init"),
    },
    "prepare": {
        "shard_size": Key(int, 4096, "images per decoded-image cache shard", _positive, "an integer >= 1"),
    },
    "augment": {
        "enabled": Key(bool, True, "complete vehicle captions missing colour / type zero-shot; false copies them"),
        "model": Key(str, "initial", "the scoring model: 'initial' (model.name + model.pretrained, as training "
                     "starts) or a local-dir checkpoint folder"),
        "min_confidence": Key((int, float), 0.7, "softmax probability over the candidates below which an "
                              "attribute is left missing", _between(0, 1), "a number in [0, 1]"),
        "guess_brand": Key(bool, False, "also complete missing brands (the reference did not: CLIP is weak at brands)"),
        "batch_size": Key(int, 256, "images or prompts per embedding batch", _positive, "an integer >= 1"),
    },
    "train": {
        "epochs": Key(int, 8, "passes over the training pairs", _positive, "an integer >= 1"),
        "batch_size": Key(int, 64, "pairs per step", _positive, "an integer >= 1"),
        "lr": Key((int, float), 1e-3, "peak AdamW learning rate", _positive, "a number > 0"),
        "weight_decay": Key((int, float), 0.1, "AdamW weight decay", _non_negative, "a number >= 0"),
        "warmup_steps": Key(int, 50, "linear warmup steps before the cosine decay", _non_negative, "an integer >= 0"),
        "grad_clip": Key((int, float), 1.0, "max gradient norm, 0 = off", _non_negative, "a number >= 0"),
        "batching": Key(str, "mixed", "mixed | by_category (each batch holds one category: harder negatives)",
                        _one_of("by_category", "mixed"), "'by_category' or 'mixed'"),
        "shared_captions": Key(bool, True, "pairs with identical captions are positives of each other in the loss"),
        "seed": Key(int, 0, "seed for initialisation and data order"),
        "precision": Key(str, "auto", "auto (bf16 autocast on GPU, fp32 on CPU) | fp32 | bf16",
                         _one_of("auto", "fp32", "bf16"), "'auto', 'fp32' or 'bf16'"),
        "threads": Key(int, 0, "CPU threads for torch, 0 = torch's default", _non_negative, "an integer >= 0"),
        "checkpoint_every_steps": Key(int, 0, "also checkpoint every N steps inside an epoch, 0 = per epoch only",
                                      _non_negative, "an integer >= 0"),
    },
    "evaluate": {
        "top_k": Key(int, 10, "ranked list length scored (the challenge uses 10)", _between(1, 1000), "an integer 1..1000"),
        "pedestrian_relevance": Key(str, "strict", "strict (equal 21-bit vectors) | inclusion (same gender, "
                                    "query bits subset of image bits)", _one_of("strict", "inclusion"),
                                    "'strict' or 'inclusion'"),
        "batch_size": Key(int, 256, "images or texts per embedding batch", _positive, "an integer >= 1"),
        "baseline": Key(bool, True, "also score the untrained (initial) model"),
    },
    "retrieval": {
        "prompt_enhancement": Key(bool, False, "embed vehicle queries with prompt_suffix appended"),
        "prompt_suffix": Key(str, "image taken by traffic surveillance cameras", "the text appended to vehicle queries"),
        "category_split": Key(bool, True, "a query's category decides its gallery (vehicle or pedestrian images)"),
        "gallery_classifier": Key(str, "aspect_ratio", "how unlabelled gallery images get a category: zero_shot | "
                                  "aspect_ratio", _one_of("zero_shot", "aspect_ratio"),
                                  "'zero_shot' or 'aspect_ratio'"),
        "rerank": Key(bool, False, "adaption re-ranking of each query's top rerank_k candidates"),
        "rerank_k": Key(int, 20, "candidates re-ranked per query (at least the returned top_k)", _between(1, 1000),
                        "an integer 1..1000"),
        "rerank_blend": Key((int, float), 0.5, "weight of the adapted query's score (0 = original order)",
                            _between(0, 1), "a number in [0, 1]"),
        "rerank_flip": Key(bool, True, "score each candidate as the max over the image and its mirror"),
    },
    "predict": {
        "top_k": Key(int, 10, "image names per query in the submission", _between(1, 1000), "an integer 1..1000"),
    },
    "mlflow": {
        "enabled": Key(bool, True, "log train/evaluate/predict runs to MLflow and register the model"),
        "experiment": Key(str, "trafficlip", "MLflow experiment name", _non_empty, "a non-empty name"),
        "registered_model": Key(str, "traffic-clip", "registered model name", _non_empty, "a non-empty name"),
        "min_gain": Key((int, float), 0.005, "mAP@10 a challenger must gain over the champion", _between(0, 1),
                        "a number 0..1"),
        "confidence": Key((int, float), 0.95, "bootstrap probability of improvement needed to promote",
                          _between(0, 1), "a number 0..1"),
        "floor": Key((int, float), 0.05, "mAP@10 the first version needs to become champion", _between(0, 1),
                     "a number 0..1"),
        "bootstrap_samples": Key(int, 2000, "paired bootstrap resamples over the validation queries",
                                 _positive, "an integer >= 1"),
        "gallery_queries": Key(int, 6, "validation queries drawn as retrieval galleries", _between(0, 100),
                               "an integer 0..100"),
    },
}


def defaults() -> dict:
    return {section: {name: copy.deepcopy(key.default) for name, key in keys.items()}
            for section, keys in SCHEMA.items()}


def _type_name(kind) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _line_map(text: str, file: str | Path | None = None) -> dict[tuple[str, ...], int]:
    """(section, key) -> 1-based line in the YAML text, from the composed node tree.

    With ``file``, a key given twice in one mapping is an InputError (YAML keeps the last one
    silently, so the first would be ignored without a word)."""
    lines: dict[tuple[str, ...], int] = {}
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return lines

    def walk(n, path):
        if isinstance(n, yaml.MappingNode):
            for key_node, value_node in n.value:
                p = path + (str(key_node.value),)
                line = key_node.start_mark.line + 1
                if file is not None and p in lines:
                    raise InputError(file, f"'{'.'.join(p)}' is given twice (lines {lines[p]} and {line})",
                                     line=line, field=".".join(p), expected="each key once")
                lines[p] = line
                walk(value_node, p)
    walk(node, ())
    return lines


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def validate(raw: Any, file: str | Path = "params.yaml", text: str | None = None) -> dict:
    """Check a parsed params mapping against SCHEMA; return it with defaults filled in."""
    lines = _line_map(text, file) if text is not None else {}
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise InputError(file, "top level is not a mapping", expected="sections such as 'train:'")
    result = defaults()
    for section, values in raw.items():
        if section not in SCHEMA:
            raise InputError(file, f"unknown section '{section}'", line=lines.get((str(section),)),
                             field=str(section), expected="one of " + ", ".join(SCHEMA))
        if values is None:
            continue
        if not isinstance(values, dict):
            raise InputError(file, f"section '{section}' is not a mapping", line=lines.get((section,)),
                             field=section, expected="key: value lines")
        for name, value in values.items():
            where = lines.get((section, str(name)))
            dotted = f"{section}.{name}"
            key = SCHEMA[section].get(name)
            if key is None:
                raise InputError(file, f"unknown key '{dotted}'", line=where, field=dotted,
                                 expected="one of " + ", ".join(f"{section}.{k}" for k in SCHEMA[section]))
            kinds = key.kind if isinstance(key.kind, tuple) else (key.kind,)
            if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
                hint = ""
                if isinstance(value, str) and float in kinds and _is_number(value):
                    hint = f"; YAML reads {value} as text: write it with a dot, e.g. {float(value)!r}"
                raise InputError(file, f"{value!r} has the wrong type{hint}", line=where, field=dotted,
                                 expected=key.expected or _type_name(key.kind))
            if key.check is not None and not key.check(value):
                raise InputError(file, f"{value!r} is out of range", line=where, field=dotted,
                                 expected=key.expected)
            result[section][name] = value
    return result


def load(path: str | Path = "params.yaml", overrides: dict[str, Any] | None = None) -> dict:
    """Read and validate params.yaml; ``overrides`` maps 'section.key' to a value (validated too)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "parameters file not found", expected="a params.yaml file")
    text = path.read_text(encoding="utf-8")
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise InputError(path, f"not valid YAML: {getattr(exc, 'problem', exc)}",
                         line=mark.line + 1 if mark else None) from None
    params = validate(raw, path, text)
    if overrides:
        merged = copy.deepcopy(raw or {})
        for dotted, value in overrides.items():
            section, _, name = dotted.partition(".")
            merged.setdefault(section, {})
            if merged[section] is None:
                merged[section] = {}
            merged[section][name] = value
        params = validate(merged, f"{path} (with overrides)")
    return params
