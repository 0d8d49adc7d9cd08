"""The agent stays light: no web framework, torch, onnx or cryptography (about 7 MB RSS: the
agent only verifies, with libsodium) at runtime; runtimes load lazily."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta

from edgefleet.shared import (
    Command,
    CommandType,
    encode,
    generate_signing_key,
    save_public_key,
    sign_command,
    sign_manifest,
)
from edgefleet.shared.signing import public_key_of
from support.samples import make_manifest

FORBIDDEN = [
    "cryptography",
    "fastapi",
    "uvicorn",
    "sqlalchemy",
    "torch",
    "onnx",
    "onnxruntime",
    "ai_edge_litert",
    "tflite_runtime",
]


def run_probe(code: str) -> tuple[set[str], object]:
    """Run ``code`` in a fresh interpreter: the modules it left loaded, and its ``result``."""
    probe = (
        f"import sys, json\nresult = None\n{code}\n"
        "print(json.dumps({'modules': sorted(sys.modules), 'result': result}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    found = json.loads(out.stdout.strip().splitlines()[-1])
    return set(found["modules"]), found["result"]


def imported_after(code: str) -> set[str]:
    return run_probe(code)[0]


def test_importing_the_agent_loads_no_runtime_or_framework():
    modules = imported_after(
        "import edgefleet.agent.agent, edgefleet.agent.cli, edgefleet.agent.capabilities"
    )
    assert not {m for m in modules if m.split(".")[0] in FORBIDDEN}


def test_an_onnx_model_does_not_load_litert(tmp_path):
    from support.agent_models import linear_classifier

    model = linear_classifier(tmp_path / "m.onnx", seed=1)
    code = (
        "from pathlib import Path\nfrom edgefleet.agent.runtimes.onnx import OnnxRuntimeModel\n"
        f"OnnxRuntimeModel(Path({str(model.path)!r}))"
    )
    modules = imported_after(code)
    assert "onnxruntime" in modules
    assert "ai_edge_litert" not in modules
    assert "onnx" not in modules


def test_verifying_what_the_controller_signed_never_loads_cryptography(tmp_path):
    """The agent's whole verification path (pinned key file, desired state, commands) runs on
    libsodium: a good manifest and command are accepted, a forged one refused, and
    ``cryptography`` is never imported in that process."""
    key = generate_signing_key()
    save_public_key(public_key_of(key), tmp_path / "controller.pub")
    now = datetime.now(UTC)
    signed = sign_manifest(make_manifest(serial=7, created_at=now), key)
    (tmp_path / "good.json").write_bytes(encode(signed))
    forged = signed.model_copy(update={"manifest": {**signed.manifest, "serial": 8}})
    (tmp_path / "forged.json").write_bytes(encode(forged))
    command = Command(
        device_id="pi-001",
        type=CommandType.ROLLBACK,
        issued_at=now,
        serial=3,
        expires_at=now + timedelta(minutes=10),
    )
    (tmp_path / "command.json").write_bytes(encode(sign_command(command, key)))
    code = f"""
import edgefleet.agent.cli, edgefleet.agent.agent
from pathlib import Path
from edgefleet.agent.commands import CommandGate
from edgefleet.agent.intake import read_desired
from edgefleet.shared.signing import load_public_key
d = Path({str(tmp_path)!r})
key = load_public_key(d / "controller.pub")
def read(name):
    return read_desired(
        (d / name).read_bytes(), key, device_id="pi-001", last_serial=0, last_digest=None
    )
good, bad = read("good.json"), read("forged.json")
admitted = CommandGate(d / "command-serial", key, "pi-001").admit((d / "command.json").read_bytes())
verified = getattr(good, "verified", None)
result = {{
    "good": type(good).__name__ if verified else repr(good),
    "serial": verified.manifest.serial if verified else None,
    "bad": bad.reason,
    "command": admitted.serial,
}}
"""
    modules, result = run_probe(code)
    assert result == {
        "good": "Accepted",
        "serial": 7,
        "bad": "SignatureError: manifest signature does not verify with key " + signed.key_id,
        "command": 3,
    }
    assert "nacl" in modules
    assert not {m for m in modules if m.split(".")[0] == "cryptography"}
