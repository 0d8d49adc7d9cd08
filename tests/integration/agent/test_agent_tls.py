"""The agent talks to a TLS broker (pinned CA) with a username and password."""

from __future__ import annotations

import datetime as dt
import ipaddress
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edgefleet.agent.agent import Agent
from support.agent_harness import DEVICE, make_settings
from support.mosquitto import MosquittoBroker, free_port
from support.mqtt import wait_until

LOOPBACK = ipaddress.ip_address("127.0.0.1")


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def write_pki(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder().subject_name(_name("test-ca")).issuer_name(_name("test-ca"))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder().subject_name(_name("127.0.0.1")).issuer_name(ca.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(LOOPBACK)]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    paths = directory / "ca.crt", directory / "server.crt", directory / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    return paths


@pytest.fixture
def tls_broker(tmp_path):
    ca, cert, key = write_pki(tmp_path)
    passwords = tmp_path / "passwords"
    passwords.write_text(f"{DEVICE}:s3cret\n")
    subprocess.run(["mosquitto_passwd", "-U", str(passwords)], check=True)
    port = free_port()
    broker = MosquittoBroker(
        tmp_path / "mosquitto",
        extra_config=(
            f"password_file {passwords}\nlistener {port} 127.0.0.1\n"
            f"cafile {ca}\ncertfile {cert}\nkeyfile {key}\n"
        ),
    )
    broker.start()
    broker.tls_port = port
    broker.ca = ca
    yield broker
    broker.kill()


def test_connects_over_tls_with_credentials(tls_broker, topics, signing, tmp_path):
    url = f"mqtts://127.0.0.1:{tls_broker.tls_port}"
    common = {
        "device_id": DEVICE,
        "broker_url": url,
        "topics": topics,
        "key_path": signing[1],
        "tls_ca_file": tls_broker.ca,
    }
    agent = Agent(
        make_settings(data_dir=tmp_path / "ok", username=DEVICE, password="s3cret", **common)
    ).start()
    try:
        wait_until(agent.session.connected.is_set, timeout=10)
        wait_until(lambda: f"u'{DEVICE}'" in tls_broker.log(), timeout=5)
    finally:
        agent.stop()
    wrong = Agent(
        make_settings(data_dir=tmp_path / "bad", username=DEVICE, password="nope", **common)
    ).start()
    try:
        wait_until(lambda: wrong.session.last_refusal is not None, timeout=10)
        assert not wrong.session.connected.is_set()
    finally:
        wrong.stop()
