"""params.yaml: one loader, one schema. Unknown or ill-typed keys are errors naming key and line.

Each pipeline step reads only its own section; dvc.yaml lists the keys each stage depends on, so a
change reruns only what depends on it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tasks.core.errors import InputError


@dataclass(frozen=True)
class Key:
    """One parameter: its type, default, help and limits. The check, the error's "expected ..." text
    and the DAG form's JSON schema are all derived from these fields, so they cannot disagree."""
    kind: type | tuple[type, ...]
    default: Any
    help: str
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False        # the minimum itself is out of range
    choices: tuple[str, ...] | None = None
    non_empty: bool = False

    def check(self, value) -> bool:
        if self.choices is not None and value not in self.choices:
            return False
        if self.non_empty and not value.strip():
            return False
        if self.minimum is not None and (value <= self.minimum if self.exclusive_minimum else value < self.minimum):
            return False
        return self.maximum is None or value <= self.maximum

    @property
    def number(self) -> str:
        return "an integer" if self.kind is int else "a number"

    @property
    def expected(self) -> str:
        if self.choices is not None:
            quoted = [repr(c) for c in self.choices]
            return ", ".join(quoted[:-1]) + " or " + quoted[-1]
        if self.non_empty:
            return "a non-empty name"
        if self.minimum is not None and self.maximum is not None:
            if self.kind is int:
                return f"an integer {self.minimum}..{self.maximum}"
            low = "(" if self.exclusive_minimum else "["
            return f"a number in {low}{self.minimum}, {self.maximum}]"
        if self.minimum is not None:
            return f"{self.number} {'>' if self.exclusive_minimum else '>='} {self.minimum}"
        return _type_name(self.kind)

    def json_schema(self) -> dict:
        """The same rules as a JSON schema (Airflow's trigger form validates with it)."""
        kinds = self.kind if isinstance(self.kind, tuple) else (self.kind,)
        names = {int: "integer", float: "number", str: "string", bool: "boolean"}
        types = ["number"] if float in kinds else [names[k] for k in kinds]
        schema: dict[str, Any] = {"type": types[0] if len(types) == 1 else types}
        if self.choices is not None:
            schema["enum"] = list(self.choices)
        if self.non_empty:
            schema["minLength"] = 1
        if self.minimum is not None:
            schema["exclusiveMinimum" if self.exclusive_minimum else "minimum"] = self.minimum
        if self.maximum is not None:
            schema["maximum"] = self.maximum
        return schema

    def describe(self) -> str:
        """The help text with its limits, as a form field shows it."""
        return f"{self.help[0].upper()}{self.help[1:]} ({self.expected})."


def _positive(kind) -> dict:
    return {"minimum": 0, "exclusive_minimum": True} if kind is not int else {"minimum": 1}


def _between(lo, hi) -> dict:
    return {"minimum": lo, "maximum": hi}


NUMBER = (int, float)

SCHEMA: dict[str, dict[str, Key]] = {
    "data": {
        "on_error": Key(str, "quarantine", "what a bad label line or image does: fail | quarantine",
                        choices=("fail", "quarantine")),
    },
    "model": {
        "name": Key(str, "TrafficCLIP-Tiny", "open_clip architecture name (ours in tasks/model_configs)",
                    non_empty=True),
        "pretrained": Key(str, "", "open_clip pretrained tag, a local checkpoint folder or file, or '' for random init"),
    },
    "prepare": {
        "shard_size": Key(int, 4096, "images per decoded-image cache shard", **_positive(int)),
        "workers": Key(int, 0, "processes decoding images, 0 = every core (the cache is the same for any number)",
                       minimum=0),
    },
    "augment": {
        "enabled": Key(bool, True, "complete vehicle captions missing colour / type zero-shot; false copies them"),
        "model": Key(str, "initial", "the scoring model: 'initial' (model.name + model.pretrained, as training "
                     "starts) or a local-dir checkpoint folder", non_empty=True),
        "min_confidence": Key(NUMBER, 0.7, "softmax probability over the candidates below which an "
                              "attribute is left missing", **_between(0, 1)),
        "guess_brand": Key(bool, False, "also complete missing brands (the reference did not: CLIP is weak at brands)"),
        "batch_size": Key(int, 256, "images or prompts per embedding batch", **_positive(int)),
    },
    "train": {
        # a ceiling against typos: 2000 epochs would hold a GPU node for weeks
        "epochs": Key(int, 8, "passes over the training pairs", **_between(1, 200)),
        # a contrastive batch needs a negative: with one pair the loss is constant
        "batch_size": Key(int, 64, "pairs per step (per process under torchrun); each sees batch_size - 1 negatives",
                          minimum=2),
        "lr": Key(NUMBER, 1e-3, "peak AdamW learning rate: about 1e-3 from scratch, 4e-7 to fine-tune pretrained "
                  "CLIP", minimum=0, exclusive_minimum=True, maximum=1),
        "weight_decay": Key(NUMBER, 0.1, "AdamW weight decay", minimum=0),
        "warmup_steps": Key(int, 50, "linear warmup steps before the cosine decay", minimum=0),
        "grad_clip": Key(NUMBER, 1.0, "max gradient norm, 0 = off", minimum=0),
        "batching": Key(str, "mixed", "mixed | by_category (each batch holds one category: harder negatives)",
                        choices=("by_category", "mixed")),
        "shared_captions": Key(bool, True, "pairs with identical captions are positives of each other in the loss"),
        "seed": Key(int, 0, "seed for initialisation and data order", minimum=0),
        "precision": Key(str, "auto", "auto (bf16 autocast on GPU, fp32 on CPU) | fp32 | bf16",
                         choices=("auto", "fp32", "bf16")),
        "threads": Key(int, 0, "CPU threads for torch, 0 = torch's default", minimum=0),
        "checkpoint_every_steps": Key(int, 0, "also checkpoint every N steps inside an epoch, 0 = per epoch only",
                                      minimum=0),
    },
    "evaluate": {
        "top_k": Key(int, 10, "ranked list length scored (the challenge uses 10)", **_between(1, 1000)),
        "pedestrian_relevance": Key(str, "strict", "strict (equal 21-bit vectors) | inclusion (same gender, "
                                    "query bits subset of image bits)", choices=("strict", "inclusion")),
        "batch_size": Key(int, 256, "images or texts per embedding batch", **_positive(int)),
        "baseline": Key(bool, True, "also score the untrained (initial) model"),
    },
    "retrieval": {
        "prompt_enhancement": Key(bool, False, "embed vehicle queries with prompt_suffix appended"),
        "prompt_suffix": Key(str, "image taken by traffic surveillance cameras", "the text appended to vehicle queries"),
        "category_split": Key(bool, True, "a query's category decides its gallery (vehicle or pedestrian images)"),
        "gallery_classifier": Key(str, "aspect_ratio", "how unlabelled gallery images get a category: zero_shot | "
                                  "aspect_ratio", choices=("zero_shot", "aspect_ratio")),
        "rerank": Key(bool, False, "adaption re-ranking of each query's top rerank_k candidates"),
        "rerank_k": Key(int, 20, "candidates re-ranked per query (at least the returned top_k)", **_between(1, 1000)),
        "rerank_blend": Key(NUMBER, 0.5, "weight of the adapted query's score (0 = original order)", **_between(0, 1)),
        "rerank_flip": Key(bool, True, "score each candidate as the max over the image and its mirror"),
    },
    "predict": {
        "top_k": Key(int, 10, "image names per query in the submission", **_between(1, 1000)),
    },
    "mlflow": {
        "enabled": Key(bool, True, "log train/evaluate/predict runs to MLflow and register the model"),
        "experiment": Key(str, "trafficlip", "MLflow experiment name", non_empty=True),
        "registered_model": Key(str, "traffic-clip", "registered model name", non_empty=True),
        "min_gain": Key(NUMBER, 0.005, "mAP@10 a challenger must gain over the champion", **_between(0, 1)),
        "confidence": Key(NUMBER, 0.95, "bootstrap probability of improvement needed to promote", **_between(0, 1)),
        "floor": Key(NUMBER, 0.05, "mAP@10 the first version needs to become champion", **_between(0, 1)),
        "bootstrap_samples": Key(int, 2000, "paired bootstrap resamples over the validation queries",
                                 **_positive(int)),
        "gallery_queries": Key(int, 6, "validation queries drawn as retrieval galleries", **_between(0, 100)),
    },
}


def key(dotted: str) -> Key:
    """The schema entry of 'section.key'."""
    section, _, name = dotted.partition(".")
    return SCHEMA[section][name]


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
                                 expected=key.expected)
            if not key.check(value):
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
