"""Fixtures of tests/recipes: generated audio (numpy tones as WAV via the standard library), a
loopback stub of an OpenAI-compatible judge, the tiny random Omni thinker of mapo_verl.demo,
and the repository's scripts imported as modules."""

from __future__ import annotations

import importlib.util
import json
import sys
import threading
import time
import wave
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
RECIPES = ROOT / "recipes"


def tone(freq_hz: float, seconds: float, rate: int, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return amplitude * np.sin(2 * np.pi * freq_hz * t)


def write_wav(path: Path, samples: np.ndarray, rate: int, width: int = 2) -> Path:
    """PCM WAV with the standard library; ``samples`` [n] or [n, channels] in [-1, 1]."""
    samples = np.asarray(samples, dtype=np.float64)
    frames = samples.reshape(len(samples), -1) if samples.ndim > 1 else samples.reshape(-1, 1)
    if width == 1:
        data = np.round(frames * 127 + 128).astype(np.uint8).tobytes()
    elif width == 2:
        data = np.round(frames * 32767).astype("<i2").tobytes()
    elif width == 3:
        ints = np.round(frames * (2**23 - 1)).astype("<i4").reshape(-1)
        data = b"".join(int(v).to_bytes(3, "little", signed=True) for v in ints)
    else:
        raise ValueError(width)
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(frames.shape[1])
        handle.setsampwidth(width)
        handle.setframerate(rate)
        handle.writeframes(data)
    return path


def load_script(name: str):
    """scripts/<name>.py as a module (the scripts are not part of the installed package)."""
    spec = importlib.util.spec_from_file_location(f"mapo_script_{name}", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


class StubJudge:
    """A chat-completions endpoint on 127.0.0.1 whose replies are scripted per request.

    ``script`` holds one entry per request, used in order (the last one repeats): an int is
    an HTTP error status, ``("sleep", s, text)`` answers ``text`` after ``s`` seconds, a str is
    the reply. Every request body and its headers are recorded.
    """

    def __init__(self):
        self.script: list = ["yes"]
        self.requests: list[dict] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.requests.append({"path": self.path, "body": body, "headers": dict(self.headers)})
                step = stub.script[min(len(stub.requests) - 1, len(stub.script) - 1)]
                if isinstance(step, int):
                    self.send_response(step)
                    self.end_headers()
                    return
                if isinstance(step, tuple):
                    time.sleep(min(step[1], 5.0))
                    step = step[2]
                payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": step}}]}).encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub_judge():
    judge = StubJudge()
    yield judge
    judge.close()


@pytest.fixture(scope="session")
def tiny_omni(tmp_path_factory) -> Path:
    """The demo's tiny random Qwen2.5-Omni thinker with its tokenizer and processor (built once)."""
    from mapo_verl.data.mcqa import DEFAULT_INSTRUCTION
    from mapo_verl.demo.data import corpus
    from mapo_verl.demo.model import save_tiny_omni_thinker

    return save_tiny_omni_thinker(tmp_path_factory.mktemp("tiny_omni"), corpus() + [DEFAULT_INSTRUCTION, "Options"])
