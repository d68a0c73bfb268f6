"""What the README tells a newcomer matches what the code does."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import blockws
import blockws.exceptions
from blockws.client import parse_uri

ROOT = Path(__file__).resolve().parent.parent
README = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())  # one line: wrapping doesn't matter


def test_the_readme_says_echo_client_needs_the_echo_server():
    # Run alone, the client fails: the README must not claim every example runs on its own.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "echo_client.py"), f"ws://127.0.0.1:{port}/"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PYTHONPATH": str(ROOT)},  # this checkout's blockws, not an installed one
    )
    assert out.returncode != 0 and f"can't connect to 127.0.0.1:{port}" in out.stderr
    assert "Each file in `examples/` runs on its own" not in README
    assert "`echo_client.py` needs the server of `echo_server.py`" in README


def test_the_readme_says_http_urls_are_taken_as_ws():
    assert "`http://` and `https://` URLs are taken as `ws://` and `wss://`" in README
    assert parse_uri("http://h/").url == "ws://h/" and parse_uri("https://h/").url == "wss://h/"


def test_every_client_option_is_in_the_readme():
    out = subprocess.run([sys.executable, "-m", "blockws", "--help"], capture_output=True, text=True, timeout=30)
    options = set(re.findall(r"(?<![\w-])--[a-z][a-z-]+", out.stdout)) - {"--help"}
    assert "--cafile" in options and "--version" in options
    missing = sorted(option for option in options if not re.search(rf"(?<![\w-]){option}(?![\w-])", README))
    assert not missing, f"README.md doesn't mention {missing}"


def test_every_public_name_is_in_the_api_reference():
    # Read from docs/api.rst, not from a Sphinx build: a name is in the
    # reference if a directive names it, or, for the exceptions, if the
    # automodule of blockws.exceptions lists it (its __all__).
    api = (ROOT / "docs" / "api.rst").read_text(encoding="utf-8")
    documented = set(re.findall(r"^\.\. auto(?:function|class|exception):: blockws\.(\w+)$", api, re.MULTILINE))
    if re.search(r"^\.\. automodule:: blockws\.exceptions\n   :members:$", api, re.MULTILINE):
        documented |= set(blockws.exceptions.__all__)
    assert "CertificateVerifyError" in blockws.__all__
    missing = sorted(set(blockws.__all__) - documented)
    assert not missing, f"docs/api.rst doesn't document {missing}"
