"""Benchmark: time and peak memory of the static checks, one file at a time (benign and hostile files).

Issue 17 asks that no archive, however crafted, takes a scan above 512 MiB, and that hardening the checks
costs ordinary files little. Each sample is written into its own folder and scanned in a fresh Python
process (``run_static_checks``, the whole ``static`` stage without hashing), so the peak resident memory is
that file's alone; the baseline (the interpreter with modelaudit and its libraries imported) is reported
beside it. Nothing here loads a sample.

    .venv/bin/python benchmarks/bench_static_files.py --out benchmarks/results/static_files

To compare two checkouts, run the same script with ``--code`` pointing at the other one (its modules are
imported instead of this checkout's).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pickle
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MIB = 1024 * 1024

_CHILD = r"""
import json, sys, time
from pathlib import Path
from modelaudit.static.base import StaticContext, run_static_checks
from modelaudit.target import inventory
def hwm_kib():
    # VmHWM belongs to this process image (ru_maxrss would carry the parent's peak across exec)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
# Import the checkout's own static checks (its modules register them) rather than the installed entry
# points, which may name checks another checkout does not have.
import importlib, pkgutil
import modelaudit.static as static_pkg
import modelaudit.static.base as static_base
for mod in pkgutil.iter_modules(static_pkg.__path__):
    importlib.import_module(f"modelaudit.static.{mod.name}")
import modelaudit.registry as registry
static_base.load_plugins = registry.load_plugins = lambda: None
folder = Path(sys.argv[1])
base_kib = hwm_kib()
start = time.perf_counter()
files = inventory(folder)
ctx = StaticContext(root=folder, files=files)
result = run_static_checks(ctx)
seconds = time.perf_counter() - start
peak_kib = hwm_kib()
worst = max((f.severity for f in result.findings), key=lambda s: s.rank, default=None)
print(json.dumps({"seconds": seconds, "baseline_mib": base_kib / 1024, "peak_mib": peak_kib / 1024,
                  "worst": worst.value if worst else "none", "errors": [e.message for e in result.errors],
                  "rules": sorted({f.rule_id for f in result.findings})}))
"""


class _Reduce:
    """Serialises as ``callable(*args)``; pickling only records the reference, it runs nothing."""

    def __init__(self, func: object, args: tuple[object, ...]) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return self.func, self.args


def _safetensors(folder: Path) -> None:
    from safetensors.numpy import save_file
    save_file({"w": np.random.default_rng(0).standard_normal((50 * 1024, 1024), dtype=np.float32)},
              str(folder / "model.safetensors"))


def _torch_checkpoint(folder: Path) -> None:
    import torch
    torch.save({f"layer{i}.weight": torch.randn(1024, 1024) for i in range(12)}, folder / "pytorch_model.bin")


def _training_args(folder: Path) -> None:
    import torch
    from transformers import TrainingArguments
    torch.save(TrainingArguments(output_dir=str(folder / "out"), report_to=[]), folder / "training_args.bin")


def _optimizer(folder: Path) -> None:
    import torch
    model = torch.nn.Linear(256, 256)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(4, 256)).sum().backward()
    opt.step()
    torch.save(opt.state_dict(), folder / "optimizer.pt")


def _npy(folder: Path) -> None:
    np.save(folder / "weights.npy", np.zeros((50 * 1024, 256), dtype=np.float32))


def _npy_long_header(folder: Path) -> None:
    header = repr({"descr": "|O", "fortran_order": False, "shape": (1,)}).encode()
    header = header + b" " * (100 * 1024 - len(header) - 11) + b"\n"
    body = pickle.dumps([_Reduce(os.system, ("true",))], protocol=2)
    (folder / "weights.npy").write_bytes(b"\x93NUMPY\x02\x00" + len(header).to_bytes(4, "little") + header + body)


def _joblib(folder: Path, compress: object) -> None:
    import joblib
    joblib.dump({"coef": np.arange(1 << 20, dtype=np.float64), "bias": np.ones(8)}, folder / "model.joblib",
                compress=compress)


def _big_pickle(folder: Path) -> None:
    (folder / "model.pkl").write_bytes(pickle.dumps({"rows": [list(range(100)) for _ in range(20_000)]}))


def _zip_bomb(folder: Path) -> None:
    """A PyTorch-style zip with three pickle members of 900 MiB each (one bytes literal of zeros, just under
    a 1 GiB per-member cap), a few MB on disk."""
    literal = 900 * MIB
    block = b"\x00" * (15 * MIB)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for i in range(3):
            with zf.open(f"archive/data{i or ''}.pkl", "w", force_zip64=True) as member:
                member.write(b"\x80\x04\x8e" + literal.to_bytes(8, "little"))  # PROTO 4, BINBYTES8
                for _ in range(literal // len(block)):
                    member.write(block)
                member.write(b".")
        zf.writestr("archive/version", "3\n")
    (folder / "pytorch_model.bin").write_bytes(buf.getvalue())


def _deep_code(folder: Path) -> None:
    (folder / "modeling_evil.py").write_text("import os\nos.system('true')\nx = " + "(" * 2500 + "1" + ")" * 2500 + "\n")


def _tokenizer_json(folder: Path) -> None:
    vocab = {f"tok{i}": i for i in range(200_000)}
    (folder / "tokenizer.json").write_text(json.dumps({"version": "1.0", "added_tokens": [],
                                                       "model": {"type": "BPE", "vocab": vocab, "merges": []}}))


def _gguf(folder: Path) -> None:
    import gguf
    writer = gguf.GGUFWriter(str(folder / "model.gguf"), "llama")
    writer.add_chat_template("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                             "{% endfor %}")
    writer.add_tensor("w", np.zeros((4096, 1024), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


SAMPLES: dict[str, tuple[str, Callable[[Path], None]]] = {
    "safetensors-200MB": ("benign", _safetensors),
    "torch-checkpoint-48MB": ("benign", _torch_checkpoint),
    "training_args.bin": ("benign", _training_args),
    "optimizer.pt": ("benign", _optimizer),
    "npy-50MB": ("benign", _npy),
    "joblib-arrays": ("benign", lambda f: _joblib(f, 0)),
    "joblib-arrays-zlib": ("benign", lambda f: _joblib(f, ("zlib", 3))),
    "joblib-arrays-lzma": ("benign", lambda f: _joblib(f, ("lzma", 3))),
    "pickle-15MB-lists": ("benign", _big_pickle),
    "tokenizer.json-200k": ("benign", _tokenizer_json),
    "gguf-16MB": ("benign", _gguf),
    "zip-bomb-3x900MiB": ("hostile", _zip_bomb),
    "npy-100KiB-header-object": ("hostile", _npy_long_header),
    "custom-code-2500-deep": ("hostile", _deep_code),
}


def run(code: Path, samples: list[str]) -> list[dict[str, object]]:
    rows = []
    env = {**os.environ, "PYTHONPATH": str(code), "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        for name in samples:
            kind, build = SAMPLES[name]
            folder = Path(tmp) / name
            folder.mkdir()
            build(folder)
            size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
            proc = subprocess.run([sys.executable, "-c", _CHILD, str(folder)], env=env, cwd=code, capture_output=True,
                                  text=True, timeout=900)
            if proc.returncode != 0:
                rows.append({"sample": name, "kind": kind, "bytes": size, "crashed": proc.stderr.strip()[-400:]})
            else:
                rows.append({"sample": name, "kind": kind, "bytes": size, **json.loads(proc.stdout.splitlines()[-1])})
            print(json.dumps(rows[-1])[:300], flush=True)
    return rows


def to_markdown(rows: list[dict[str, object]], code: Path) -> str:
    lines = [f"Static checks per file (`{code}`), one process per file, peak RSS from `VmHWM`.", "",
             "| sample | kind | size | seconds | peak MiB (baseline) | worst | rules |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "crashed" in r:
            lines.append(f"| {r['sample']} | {r['kind']} | {int(r['bytes']) / MIB:.1f} MiB | crashed | | | |")
            continue
        lines.append(f"| {r['sample']} | {r['kind']} | {int(r['bytes']) / MIB:.1f} MiB | {r['seconds']:.2f} | "
                     f"{r['peak_mib']:.0f} ({r['baseline_mib']:.0f}) | {r['worst']} | {', '.join(r['rules'])} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="benchmarks/results/static_files")
    parser.add_argument("--code", default=str(ROOT), help="checkout whose modelaudit is measured")
    parser.add_argument("--only", nargs="*", choices=sorted(SAMPLES), help="samples to run (default: all)")
    args = parser.parse_args()
    code = Path(args.code).resolve()
    rows = run(code, args.only or list(SAMPLES))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"code": str(code), "cpu_count": os.cpu_count(), "rows": rows},
                                                   indent=2) + "\n")
    out.with_suffix(".md").write_text(to_markdown(rows, code))
    print(to_markdown(rows, code))


if __name__ == "__main__":
    main()
