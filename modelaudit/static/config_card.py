"""config.json and the model card: does the model say consistently what it is and where it came from?

Nothing here is an exploit by itself; these findings matter because later stages trust these files. The
weight diff compares against the claimed base model (``claimed_base_model``), the loader picks classes from
``model_type``/``architectures``, and absurd sizes in config.json can exhaust memory before a single weight
is read. A card that names one base while config.json names another is a provenance lie worth a look.

Transformers is consulted only for its *name tables* (``CONFIG_MAPPING_NAMES`` and the auto-model mapping
names), read from its source files: nothing of transformers is imported or run, so the static checks never
pay for torch.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from modelaudit.findings import Finding, Location, Severity
from modelaudit.static.base import WEIGHT_TYPES, StaticContext, static_check
from modelaudit.static.safetensors_integrity import INDEX_SUFFIX as SAFETENSORS_INDEX_SUFFIX

P = "static.config-card"
R_CONFIG_MISSING = f"{P}.config-missing"
R_CONFIG_INVALID = f"{P}.config-invalid"
R_MODEL_TYPE = f"{P}.unknown-model-type"
R_ARCH = f"{P}.unknown-architecture"
R_ARCH_MISMATCH = f"{P}.architecture-mismatch"
R_NO_WEIGHTS = f"{P}.missing-weights"
R_WEIGHT_FORMAT = f"{P}.unknown-weight-format"
R_WEIGHT_ESCAPE = f"{P}.weight-path-escape"
R_ABSURD = f"{P}.absurd-value"
R_REMOTE_CODE = f"{P}.remote-code"
R_CARD_INVALID = f"{P}.card-invalid"
R_BASE_MODEL = f"{P}.base-model"
R_LICENSE = f"{P}.license-missing"
R_NO_PROVENANCE = f"{P}.no-provenance"
R_BASE_MISMATCH = f"{P}.base-model-mismatch"

RULES = {
    R_CONFIG_MISSING: "No config.json beside transformers weights: the architecture cannot be checked",
    R_CONFIG_INVALID: "config.json is not valid JSON or not a JSON object",
    R_MODEL_TYPE: "model_type is missing or unknown to transformers",
    R_ARCH: "An architectures entry is not a transformers class and not provided by auto_map",
    R_ARCH_MISMATCH: "An architectures entry belongs to a different model_type",
    R_NO_WEIGHTS: "config.json declares a model but its weight files are absent",
    R_WEIGHT_FORMAT: "A weight file's bytes are no known weight format",
    R_WEIGHT_ESCAPE: "A weight index points at a file outside the model folder",
    R_ABSURD: "A size in config.json is negative, not an integer, or absurdly large",
    R_REMOTE_CODE: "config.json has auto_map: loading needs trust_remote_code (analysed by static.custom-code)",
    R_CARD_INVALID: "The model card's YAML front matter cannot be parsed",
    R_BASE_MODEL: "The model card claims a base model (recorded for the weight diff)",
    R_LICENSE: "No licence in the model card metadata and no LICENSE file",
    R_NO_PROVENANCE: "No model card and no claimed base model: the model's origin is unknown",
    R_BASE_MISMATCH: "Sources disagree about the base model (card, card text, adapter config, config.json)",
}

OTHER_WEIGHT_SUFFIXES = {".h5", ".msgpack", ".onnx", ".tflite", ".keras", ".ot", ".mlmodel"}
MAX_CARD_BYTES = 5 * 1024 * 1024
MAX_FRONT_MATTER_CHARS = 256 * 1024
MAX_PARAMETERS = 10 ** 13
LICENSE_FILES = {"license", "license.txt", "license.md", "copying", "licence", "licence.txt", "licence.md"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")

# Size fields: (minimum, maximum). None is allowed (many configs leave e.g. head_dim null).
SIZE_LIMITS: dict[str, tuple[int, int]] = {
    "vocab_size": (1, 10_000_000),
    "hidden_size": (1, 1_000_000), "n_embd": (1, 1_000_000), "d_model": (1, 1_000_000),
    "num_hidden_layers": (1, 10_000), "n_layer": (1, 10_000), "num_layers": (1, 10_000),
    "num_attention_heads": (1, 10_000), "n_head": (1, 10_000), "num_key_value_heads": (1, 10_000),
    "intermediate_size": (1, 10_000_000), "n_inner": (1, 10_000_000), "ffn_dim": (1, 10_000_000),
    "max_position_embeddings": (1, 1_000_000_000), "n_positions": (1, 1_000_000_000),
    "head_dim": (1, 100_000), "num_local_experts": (1, 100_000), "num_experts": (1, 100_000),
}
_CARD_BODY_CLAIMS = (
    re.compile(r"fine-?tuned\s+(?:version\s+)?(?:of|from)\s+\[[^\]]*\]\(https?://huggingface\.co/"
               r"([A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)\)", re.I),
    re.compile(r"fine-?tuned\s+from\s+model(?:\s*\[optional\])?\s*:?\**\s*:?\s*\[?`?"
               r"([A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)", re.I),
)


# --------------------------------------------------------------------------------------------------
# transformers name tables, read from its source (no class is imported or instantiated)
#
# Importing ``transformers.models.auto`` imports torch: about 2.7 s on two cores, five times a whole static
# scan, for two tables of names. The tables are plain literals in the installed transformers' source
# (``OrderedDict([...])``, ``.update({...})``), so they are read from there with ``ast``; nothing of
# transformers runs. A layout this reader does not know gives None, and the check then skips the name test
# (as it does when transformers is missing), never a false "unknown model type".

AUTO_TABLE_FILES = ("auto_mappings.py", "configuration_auto.py", "modeling_auto.py")
"""Files of ``transformers/models/auto`` that define the ``*_MAPPING_NAMES`` tables, in import order
(a later file builds on an earlier file's tables, as the modules do)."""

TABLE_SUFFIX = "MAPPING_NAMES"
CONFIG_TABLE = "CONFIG_MAPPING_NAMES"


class _NotLiteral(ValueError):
    """A table statement this reader cannot evaluate without running code."""


def _transformers_auto_dir() -> Path | None:
    """``transformers/models/auto`` of the installed transformers; ``find_spec`` of a top-level name locates
    the package without importing it."""
    try:
        spec = importlib.util.find_spec("transformers")
    except (ImportError, ValueError):
        return None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        folder = Path(location) / "models" / "auto"
        if folder.is_dir():
            return folder
    return None


def _literal(node: ast.expr) -> Any:
    """A Python literal (strings, tuples, lists, dicts); anything else is not read."""
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as exc:
        raise _NotLiteral(str(exc)) from None


def _table_named(node: ast.expr, tables: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A table read earlier, named as ``NAME``, ``NAME.items()`` or ``list(NAME.items())``."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "list" \
            and len(node.args) == 1:
        node = node.args[0]
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "items" \
            and not node.args:
        node = node.func.value
    if isinstance(node, ast.Name) and node.id in tables:
        return dict(tables[node.id])
    raise _NotLiteral(ast.dump(node)[:200])


def _literal_pairs(node: ast.expr, tables: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A dict literal, a list of pairs (``*OTHER.items()`` splices another table in), or a table's name."""
    if isinstance(node, ast.Name):
        return _table_named(node, tables)
    if isinstance(node, (ast.List, ast.Tuple)) and any(isinstance(e, ast.Starred) for e in node.elts):
        pairs: dict[str, Any] = {}
        for element in node.elts:
            if isinstance(element, ast.Starred):
                pairs.update(_table_named(element.value, tables))
            else:
                pairs.update([_literal(element)])
        return pairs
    value = _literal(node)
    try:
        return dict(value)
    except (TypeError, ValueError) as exc:
        raise _NotLiteral(str(exc)) from None


def _table_call(node: ast.expr, tables: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``OrderedDict(...)`` / ``dict(...)`` (also ``OrderedDict[str, str](...)``) or a literal, evaluated as
    Python would: positional pairs first, then keyword and ``**`` entries in order."""
    if not isinstance(node, ast.Call):
        return _literal_pairs(node, tables)
    func = node.func.value if isinstance(node.func, ast.Subscript) else node.func
    if not (isinstance(func, ast.Name) and func.id in ("OrderedDict", "dict")) or len(node.args) > 1:
        raise _NotLiteral(ast.dump(node.func))
    table = _literal_pairs(node.args[0], tables) if node.args else {}
    for keyword in node.keywords:
        if keyword.arg is None:
            table.update(_literal_pairs(keyword.value, tables))
        else:
            table[keyword.arg] = _literal(keyword.value)
    return table


def _apply_statement(stmt: ast.stmt, tables: dict[str, dict[str, Any]]) -> None:
    """Apply one top-level statement that builds or changes a ``*_MAPPING_NAMES`` table."""
    if isinstance(stmt, (ast.Assign, ast.AnnAssign)):
        targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
        if len(targets) == 1 and isinstance(targets[0], ast.Name) and targets[0].id.endswith(TABLE_SUFFIX) \
                and stmt.value is not None:
            tables[targets[0].id] = _table_call(stmt.value, tables)
        elif len(targets) == 1 and isinstance(targets[0], ast.Subscript) \
                and isinstance(targets[0].value, ast.Name) and targets[0].value.id in tables and stmt.value:
            tables[targets[0].value.id][_literal(targets[0].slice)] = _literal(stmt.value)
    elif isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call):
        call = stmt.value
        if isinstance(call.func, ast.Attribute) and call.func.attr == "update" \
                and isinstance(call.func.value, ast.Name) and call.func.value.id in tables:
            for arg in call.args:
                tables[call.func.value.id].update(_literal_pairs(arg, tables))


def _names_in(tree: ast.Module) -> set[str]:
    """``*_MAPPING_NAMES`` tables a module defines or imports: what ``dir()`` of the module would list."""
    names: set[str] = set()
    for stmt in tree.body:
        if isinstance(stmt, ast.ImportFrom):
            names.update(a.asname or a.name for a in stmt.names if (a.asname or a.name).endswith(TABLE_SUFFIX))
        elif isinstance(stmt, (ast.Assign, ast.AnnAssign)):
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name) and t.id.endswith(TABLE_SUFFIX))
    return names


@dataclass(frozen=True)
class AutoTables:
    """transformers' auto name tables as its modules would hold them after import."""

    tables: dict[str, dict[str, Any]]
    """Table name -> its final contents."""
    modeling_names: frozenset[str]
    """The tables ``modeling_auto`` defines or imports (the architecture table is built from these)."""


@functools.lru_cache(maxsize=1)
def _auto_tables() -> AutoTables | None:
    """Every ``*_MAPPING_NAMES`` table of transformers' auto classes, or None if they cannot be read."""
    folder = _transformers_auto_dir()
    if folder is None:
        return None
    tables: dict[str, dict[str, Any]] = {}
    modeling: set[str] = set()
    try:
        for name in AUTO_TABLE_FILES:
            path = folder / name
            if not path.is_file():
                continue
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for stmt in tree.body:
                _apply_statement(stmt, tables)
            if name == AUTO_TABLE_FILES[-1]:
                modeling = _names_in(tree) & set(tables)
    except (OSError, UnicodeDecodeError, SyntaxError, ValueError, TypeError, RecursionError, MemoryError):
        return None  # an unusual transformers install must not break the scan
    if CONFIG_TABLE not in tables or not modeling:
        return None
    return AutoTables(tables=tables, modeling_names=frozenset(modeling))


def known_model_types() -> frozenset[str] | None:
    """``model_type`` names transformers knows, or None if the table cannot be read."""
    auto = _auto_tables()
    return frozenset(auto.tables[CONFIG_TABLE]) if auto is not None else None


@functools.lru_cache(maxsize=1)
def architecture_table() -> dict[str, frozenset[str]] | None:
    """Class name -> model_types that map to it, from the auto-model ``*_MAPPING_NAMES`` tables."""
    auto = _auto_tables()
    if auto is None:
        return None
    table: dict[str, set[str]] = {}
    for name in sorted(auto.modeling_names):
        for model_type, classes in auto.tables[name].items():
            for cls in (classes if isinstance(classes, (tuple, list)) else (classes,)):
                if isinstance(cls, str):
                    table.setdefault(cls, set()).add(str(model_type))
    return {k: frozenset(v) for k, v in table.items()}


# --------------------------------------------------------------------------------------------------
# Model card


@dataclass
class Card:
    """What README.md says about the model."""

    path: str | None = None
    """Card file, relative to the model root; None when there is none."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """YAML front matter (empty when absent or invalid)."""
    body: str = ""
    """Text after the front matter."""
    problem: str | None = None
    """Why the front matter could not be read, if it could not."""
    line: int | None = None
    """Line of the problem, when known."""

    @property
    def base_models(self) -> list[str]:
        return _as_str_list(self.metadata.get("base_model"))

    @property
    def body_base_models(self) -> list[str]:
        found: list[str] = []
        for pattern in _CARD_BODY_CLAIMS:
            found.extend(m.group(1).rstrip(".") for m in pattern.finditer(self.body))
        return list(dict.fromkeys(found))

    @property
    def license(self) -> list[str]:
        return _as_str_list(self.metadata.get("license")) + _as_str_list(self.metadata.get("license_name"))


def _as_str_list(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value.strip()] if value.strip() else []
    if isinstance(value, list):
        return [v.strip() for v in value if isinstance(v, str) and v.strip()]
    return []


def read_card(ctx: StaticContext) -> Card:
    """Parse README.md's YAML front matter with ``yaml.safe_load``; problems are recorded, never raised."""
    entry = next((f for f in ctx.files if f.path.lower() == "readme.md"), None)
    if entry is None:
        return Card()
    card = Card(path=entry.path)
    if entry.size > MAX_CARD_BYTES:
        card.problem = f"card is larger than {MAX_CARD_BYTES} bytes"
        return card
    try:
        text = ctx.path(entry.path).read_bytes().decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        card.problem = f"card cannot be read as UTF-8: {exc}"
        return card
    lines = text.splitlines()
    if not lines or lines[0].strip() != "---":
        card.body = text
        return card
    end = next((i for i, line in enumerate(lines[1:], start=1) if line.strip() in ("---", "...")), None)
    if end is None:
        card.problem, card.line = "front matter starts with --- but never ends", 1
        card.body = text
        return card
    card.body = "\n".join(lines[end + 1:])
    front = "\n".join(lines[1:end])
    if len(front) > MAX_FRONT_MATTER_CHARS:
        card.problem = f"front matter is longer than {MAX_FRONT_MATTER_CHARS} characters"
        return card
    import yaml

    try:
        data = yaml.safe_load(front)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        card.problem = f"front matter is not valid YAML: {str(exc).splitlines()[0]}"
        card.line = mark.line + 2 if mark is not None else None
        return card
    except (RecursionError, ValueError, TypeError) as exc:
        card.problem = f"front matter cannot be parsed: {type(exc).__name__}"
        return card
    if data is None:
        return card
    if not isinstance(data, dict):
        card.problem = f"front matter is a {type(data).__name__}, not a mapping"
        return card
    card.metadata = {str(k): v for k, v in data.items()}
    return card


def _adapter_base(ctx: StaticContext) -> str | None:
    if ctx.find("adapter_config.json") is None:
        return None
    try:
        data = ctx.read_json("adapter_config.json")
    except (ValueError, OSError):
        return None
    value = data.get("base_model_name_or_path") if isinstance(data, dict) else None
    return value.strip() if isinstance(value, str) and value.strip() else None


def _config_name_or_path(ctx: StaticContext) -> str | None:
    """config.json's ``_name_or_path`` when it looks like a hub id (local paths say nothing about provenance)."""
    config = ctx.config or {}
    for key in ("_name_or_path", "_model_name_or_path"):
        value = config.get(key)
        if isinstance(value, str) and _HUB_ID.match(value.strip()):
            return value.strip()
    return None


def claimed_base_model(ctx: StaticContext) -> str | None:
    """The base model the model says it derives from: card ``base_model``, adapter config, then card text.

    The weight diff uses this to find a base to compare against. config.json's ``_name_or_path`` is not a
    claim (it is often the model's own id or a training path), so it is only used to cross-check.
    """
    card = read_card(ctx)
    for candidates in (card.base_models, [_adapter_base(ctx)], card.body_base_models):
        for value in candidates:
            if value:
                return value
    return None


def _own_repo_id(ctx: StaticContext) -> str | None:
    """``org/name`` of a hub snapshot folder (``models--org--name/snapshots/<sha>``), else None."""
    parts = ctx.root.parts
    if len(parts) >= 3 and parts[-2] == "snapshots" and parts[-3].startswith("models--"):
        return parts[-3].removeprefix("models--").replace("--", "/", 1)
    return None


def _same_model(a: str, b: str) -> bool:
    return a.strip().strip("/").lower() == b.strip().strip("/").lower()


def card_findings(ctx: StaticContext, card: Card) -> Iterator[Finding]:
    """Licence, provenance and base-model claims, and whether the sources agree."""
    if card.problem is not None:
        yield Finding(R_CARD_INVALID, Severity.LOW, f"{card.path}: {card.problem}",
                      location=Location(path=card.path, line=card.line), evidence={"problem": card.problem})
    claims: list[tuple[str, str]] = [("card metadata base_model", b) for b in card.base_models]
    adapter = _adapter_base(ctx)
    if adapter:
        claims.append(("adapter_config.json base_model_name_or_path", adapter))
    claims += [("card text", b) for b in card.body_base_models]
    if claims:
        source, value = claims[0]
        yield Finding(R_BASE_MODEL, Severity.INFO, f"the model claims to derive from {value} ({source})",
                      location=Location(path=card.path or "adapter_config.json", member="base_model"),
                      evidence={"base_model": value, "source": source, "all_claims": [list(c) for c in claims],
                                "relation": card.metadata.get("base_model_relation")
                                if isinstance(card.metadata.get("base_model_relation"), str) else None})
    yield from _mismatch_findings(ctx, card, claims)
    has_license_file = any(f.path.lower() in LICENSE_FILES for f in ctx.files)
    if not card.license and not has_license_file:
        where = "the model card has no license field" if card.path else "there is no model card"
        yield Finding(R_LICENSE, Severity.LOW, f"no licence: {where} and no LICENSE file",
                      location=Location(path=card.path), evidence={"card": card.path})
    if card.path is None and not claims:
        yield Finding(R_NO_PROVENANCE, Severity.LOW,
                      "no model card and no claimed base model: nothing says where this model comes from",
                      evidence={"card": None, "base_model": None})


def _mismatch_findings(ctx: StaticContext, card: Card, claims: list[tuple[str, str]]) -> Iterator[Finding]:
    """Card metadata is the reference claim; every other source must name one of its bases."""
    own = _own_repo_id(ctx)
    name_or_path = _config_name_or_path(ctx)
    others = list(claims)
    if name_or_path and not (own and _same_model(name_or_path, own)):
        others.append(("config.json _name_or_path", name_or_path))
    if not others:
        return
    reference_source = others[0][0]
    reference = [v for s, v in others if s == reference_source]
    for source, value in others:
        if source == reference_source or any(_same_model(value, r) for r in reference):
            continue
        yield Finding(R_BASE_MISMATCH, Severity.MEDIUM,
                      f"{reference_source} says the base model is {', '.join(reference)} but {source} says {value}",
                      location=Location(path=card.path or "config.json", member="base_model"),
                      evidence={"claimed": reference, "claimed_by": reference_source, "other": value,
                                "other_source": source})


# --------------------------------------------------------------------------------------------------
# config.json


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def absurd_values(config: dict[str, Any]) -> Iterator[tuple[str, Any, str]]:
    """(key path, value, why) for size fields that no real model has, top level and one sub-config deep."""
    holders: list[tuple[str, dict[str, Any]]] = [("", config)]
    holders += [(f"{k}.", v) for k, v in config.items() if isinstance(v, dict) and k.endswith("_config")]
    for prefix, holder in holders:
        for key, (low, high) in SIZE_LIMITS.items():
            if key not in holder or holder[key] is None:
                continue
            value = holder[key]
            if not _is_int(value):
                yield f"{prefix}{key}", value, "is not an integer"
            elif value < low:
                yield f"{prefix}{key}", value, f"is below {low}"
            elif value > high:
                yield f"{prefix}{key}", value, f"is above {high:,}"
        estimate = _parameter_estimate(holder)
        if estimate is not None and estimate > MAX_PARAMETERS:
            yield f"{prefix}(parameters)", estimate, f"implies about {estimate:.2e} parameters"


def _json_safe(value: Any) -> Any:
    """Ints and finite floats as they are, anything else (inf, nan, lists, objects) as a short repr."""
    if _is_int(value) or (isinstance(value, float) and math.isfinite(value)) or isinstance(value, str):
        return value
    return repr(value)[:100]


def _parameter_estimate(holder: dict[str, Any]) -> int | None:
    """Rough dense-transformer size (embeddings + 12·d² per layer): enough to spot memory bombs."""
    hidden = next((holder[k] for k in ("hidden_size", "n_embd", "d_model") if _is_int(holder.get(k))), None)
    layers = next((holder[k] for k in ("num_hidden_layers", "n_layer", "num_layers") if _is_int(holder.get(k))),
                  None)
    vocab: Any = holder.get("vocab_size") if _is_int(holder.get("vocab_size")) else 0
    if hidden is None or layers is None or hidden <= 0 or layers <= 0:
        return None
    return int(vocab) * hidden + layers * 12 * hidden * hidden


def _weights_present(ctx: StaticContext) -> bool:
    return any(f.content_type in WEIGHT_TYPES or PurePosixPath(f.path).suffix.lower() in OTHER_WEIGHT_SUFFIXES
               for f in ctx.files)


def weight_findings(ctx: StaticContext, declares_model: bool) -> Iterator[Finding]:
    """Weights missing, shards an index lists but the folder lacks or that escape it, .bin files of no format."""
    for entry in ctx.files:
        if entry.path.endswith(".bin") and entry.content_type in ("binary", "text", "json", "empty"):
            yield Finding(R_WEIGHT_FORMAT, Severity.MEDIUM,
                          f"{entry.path} is neither a pickle nor a PyTorch zip ({entry.content_type}); no loader "
                          f"reads it as weights and it could not be scanned",
                          location=Location(path=entry.path), evidence={"content_type": entry.content_type})
    for entry in ctx.files:
        # static.safetensors owns safetensors indexes (it also checks the shards' headers); two checks
        # reporting the same missing shard made one problem read as two
        if entry.path.endswith(".index.json") and not entry.path.endswith(SAFETENSORS_INDEX_SUFFIX):
            yield from _index_findings(ctx, entry.path)
    if declares_model and not _weights_present(ctx):
        yield Finding(R_NO_WEIGHTS, Severity.MEDIUM,
                      "config.json declares a model but there are no weight files: the weights that would be "
                      "loaded are not here to be audited",
                      location=Location(path="config.json", member="architectures"),
                      evidence={"files": [f.path for f in ctx.files][:50]})


def _index_findings(ctx: StaticContext, index: str) -> Iterator[Finding]:
    try:
        data = ctx.read_json(index)
    except (ValueError, OSError) as exc:
        yield Finding(R_CONFIG_INVALID, Severity.MEDIUM, f"{index}: {exc}", location=Location(path=index),
                      evidence={"problem": str(exc)})
        return
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict):
        yield Finding(R_CONFIG_INVALID, Severity.MEDIUM, f"{index} has no weight_map object",
                      location=Location(path=index), evidence={"problem": "no weight_map"})
        return
    folder = PurePosixPath(index).parent
    shards = sorted({v for v in weight_map.values() if isinstance(v, str)})
    escaping = [s for s in shards if s.startswith(("/", "\\")) or ".." in PurePosixPath(s.replace("\\", "/")).parts
                or re.match(r"^[A-Za-z]:", s)]
    if escaping:
        yield Finding(R_WEIGHT_ESCAPE, Severity.HIGH,
                      f"{index} points at files outside the model folder: {', '.join(escaping[:5])}",
                      location=Location(path=index, member="weight_map"), evidence={"shards": escaping[:50]})
    missing = [s for s in shards if s not in escaping and ctx.find(str(folder / s)) is None]
    if missing:
        yield Finding(R_NO_WEIGHTS, Severity.MEDIUM,
                      f"{index} lists {len(missing)} shard(s) that are not in the folder: {', '.join(missing[:5])}",
                      location=Location(path=index, member="weight_map"), evidence={"missing": missing[:50]})


def _auto_map_classes(config: dict[str, Any]) -> set[str]:
    auto_map = config.get("auto_map")
    names: set[str] = set()
    if isinstance(auto_map, dict):
        for value in auto_map.values():
            for ref in value if isinstance(value, list) else [value]:
                if isinstance(ref, str) and "." in ref:
                    names.add(ref.rsplit(".", 1)[1])
    return names


def config_findings(ctx: StaticContext) -> Iterator[Finding]:
    """config.json present, parseable, naming a known model type and architecture with sane sizes."""
    if ctx.find("config.json") is None:
        has_transformers_weights = any(f.content_type in WEIGHT_TYPES - {"gguf"} for f in ctx.files)
        adapter = ctx.find("adapter_config.json") is not None
        if has_transformers_weights and not adapter:
            yield Finding(R_CONFIG_MISSING, Severity.LOW,
                          "weights without config.json: the architecture they belong to cannot be checked",
                          evidence={"weights": [f.path for f in ctx.files if f.content_type in WEIGHT_TYPES][:20]})
        yield from weight_findings(ctx, declares_model=False)
        return
    try:
        data = ctx.read_json("config.json")
    except (ValueError, OSError) as exc:
        yield Finding(R_CONFIG_INVALID, Severity.MEDIUM, f"config.json: {str(exc).removeprefix('config.json: ')}",
                      location=Location(path="config.json"), evidence={"problem": str(exc)})
        yield from weight_findings(ctx, declares_model=False)
        return
    if not isinstance(data, dict):
        yield Finding(R_CONFIG_INVALID, Severity.MEDIUM,
                      f"config.json holds a JSON {type(data).__name__}, not an object",
                      location=Location(path="config.json"),
                      evidence={"problem": f"top level is {type(data).__name__}"})
        yield from weight_findings(ctx, declares_model=False)
        return
    custom = _auto_map_classes(data)
    yield from _type_findings(data, custom)
    for key, value, why in absurd_values(data):
        yield Finding(R_ABSURD, Severity.MEDIUM, f"config.json {key} = {value!r} {why}",
                      location=Location(path="config.json", member=key),
                      evidence={"key": key, "value": _json_safe(value), "why": why})
    if "auto_map" in data:
        yield Finding(R_REMOTE_CODE, Severity.INFO,
                      "config.json has auto_map: loading needs trust_remote_code=True (its code is analysed by "
                      "static.custom-code)", location=Location(path="config.json", member="auto_map"),
                      evidence={"classes": sorted(custom)})
    declares = bool(data.get("architectures")) or isinstance(data.get("model_type"), str)
    yield from weight_findings(ctx, declares_model=declares)


def _type_findings(data: dict[str, Any], custom: set[str]) -> Iterator[Finding]:
    model_type = data.get("model_type")
    known_types = known_model_types()
    type_known = isinstance(model_type, str) and known_types is not None and model_type in known_types
    if known_types is not None and not type_known:
        severity = Severity.INFO if custom else Severity.LOW
        what = "has no model_type" if not isinstance(model_type, str) else f"model_type {model_type!r} is unknown"
        yield Finding(R_MODEL_TYPE, severity,
                      f"config.json {what} to transformers"
                      + (" (auto_map supplies the code)" if custom else ""),
                      location=Location(path="config.json", member="model_type"),
                      evidence={"model_type": model_type if isinstance(model_type, str) else None})
    architectures = data.get("architectures")
    if architectures is None:
        return
    if not isinstance(architectures, list) or not all(isinstance(a, str) for a in architectures):
        yield Finding(R_CONFIG_INVALID, Severity.MEDIUM, "config.json architectures is not a list of class names",
                      location=Location(path="config.json", member="architectures"),
                      evidence={"problem": "architectures has the wrong type"})
        return
    table = architecture_table()
    if table is None:
        return
    for arch in architectures:
        if arch in custom:
            continue
        if arch not in table:
            yield Finding(R_ARCH, Severity.LOW, f"config.json architecture {arch!r} is not a transformers class",
                          location=Location(path="config.json", member="architectures"),
                          evidence={"architecture": arch, "model_type": model_type if type_known else None})
        elif type_known and model_type not in table[arch]:
            yield Finding(R_ARCH_MISMATCH, Severity.LOW,
                          f"config.json architecture {arch!r} belongs to {', '.join(sorted(table[arch])[:5])}, "
                          f"not to model_type {model_type!r}",
                          location=Location(path="config.json", member="architectures"),
                          evidence={"architecture": arch, "model_type": model_type,
                                    "expected_model_types": sorted(table[arch])[:20]})


@static_check("static.config-card", rules=RULES,
              description="config.json sanity against transformers and the files; model card provenance")
def check_config_card(ctx: StaticContext) -> Iterator[Finding]:
    """Config consistency (types, architectures, sizes, weights) and card provenance (base model, licence)."""
    yield from config_findings(ctx)
    yield from card_findings(ctx, read_card(ctx))
