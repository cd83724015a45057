"""A bounded load on `lmforge serve` over loopback: concurrent clients against /v1/completions and
/v1/classify, with failures, requests/s, latency percentiles and the server's memory; then
continuous batching against one generation at a time, and classify batching on and off.

    .venv/bin/python benchmarks/load_server.py [--clients 50] [--duration 60]

It trains two tiny runs (the demo's GPT shape and the sentiment CNN, a few steps: the weights do
not change the speed) and exports them into a temporary folder first.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
LMFORGE = str(Path(sys.executable).parent / "lmforge")
PROMPTS = ["def parse(", "The module", "Return the", "class "]
TEXTS = ["A warm, funny film.", "Dull and far too long.", "The cast is fine, the plot is not.",
         "One of the best films of the year."]


def export_bundles(folder: Path) -> dict[str, Path]:
    """Train the demo's GPT and the sentiment CNN for a few steps each and export them."""
    from rich.console import Console

    from lmforge.host.manager import load_plugins
    from lmforge.run.pipeline import run

    registry = load_plugins().registry
    quiet = Console(file=open(os.devnull, "w"))  # noqa: SIM115 - lives as long as the script
    bundles = {}
    for name, config in (("lm", "demo.yaml"), ("classify", "sentiment-cnn.yaml")):
        run(str(ROOT / "examples/configs" / config), registry,
            (f"runs_dir={folder}", f"name={name}", "trainer.max_steps=4",
             "trainer.warmup_steps=0", "trainer.eval_every=4", "callbacks=[]"), console=quiet)
        exporter = registry.get("exporter", "onnx").create({})
        exporter.export(folder / name, folder / name / "export", registry=registry,
                        console=quiet)
        bundles[name] = folder / name / "export"
    return bundles


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """`lmforge serve BUNDLE` on a free loopback port, until stopped with SIGTERM."""

    def __init__(self, bundle: Path, *options: str):
        self.url = f"http://127.0.0.1:{free_port()}"
        self.process = subprocess.Popen(
            [LMFORGE, "serve", str(bundle), "--port", self.url.rsplit(":", 1)[1], *options],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                if httpx.get(f"{self.url}/ready").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the server did not get ready: {self.process.stderr.read()}")

    def rss_mb(self) -> float:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        kb = next(int(line.split()[1]) for line in status.splitlines()
                  if line.startswith("VmRSS"))
        return kb / 1024

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    tokens: int = 0
    texts: int = 0


async def client_loop(url: str, route: str, index: int, deadline: float, tally: Tally) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        n = index
        while time.monotonic() < deadline:
            n += 1
            if route == "completions":
                body = {"prompt": PROMPTS[n % len(PROMPTS)], "max_tokens": 32,
                        "temperature": 0.8, "seed": n}
            else:
                body = {"input": [TEXTS[n % len(TEXTS)], TEXTS[(n + 1) % len(TEXTS)]]}
            start = time.perf_counter()
            try:
                response = await client.post(f"/v1/{route}", json=body)
            except httpx.HTTPError as exc:  # no response at all: counted as missing
                tally.failures.append(f"{type(exc).__name__}: {exc}")
                continue
            tally.latencies.append(time.perf_counter() - start)
            if response.status_code != 200:
                tally.failures.append(f"{response.status_code}: {response.text[:200]}")
            elif route == "completions":
                tally.tokens += response.json()["usage"]["completion_tokens"]
            else:
                tally.texts += len(response.json()["data"])


def load(server: Server, route: str, clients: int, duration: float,
         memory_at: tuple[float, ...] = ()) -> dict:
    """`clients` concurrent clients sending requests back to back for `duration` seconds."""
    tally = Tally()
    memory: dict[str, float] = {}

    async def main() -> None:
        deadline = time.monotonic() + duration
        started = time.monotonic()
        loops = [asyncio.create_task(client_loop(server.url, route, i, deadline, tally))
                 for i in range(clients)]
        for at in memory_at:
            await asyncio.sleep(max(0.0, started + at - time.monotonic()))
            memory[f"rss_mb_at_{at:g}s"] = round(server.rss_mb(), 1)
        await asyncio.gather(*loops)

    start = time.perf_counter()
    asyncio.run(main())
    elapsed = time.perf_counter() - start
    latencies = sorted(tally.latencies)
    return {"route": route, "clients": clients, "seconds": round(elapsed, 1),
            "requests": len(latencies), "failed_or_missing": len(tally.failures),
            "failures": tally.failures[:5],
            "requests_per_s": round(len(latencies) / elapsed, 1),
            "p50_ms": round(1000 * statistics.median(latencies), 1) if latencies else None,
            "p99_ms": round(1000 * latencies[int(0.99 * (len(latencies) - 1))], 1)
            if latencies else None,
            "tokens_per_s": round(tally.tokens / elapsed, 1),
            "texts_per_s": round(tally.texts / elapsed, 1), **memory}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--compare-seconds", type=float, default=20.0)
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        bundles = export_bundles(Path(tmp))
        checkpoints = (10.0, args.duration) if args.duration >= 10 else ()
        for route, bundle in (("completions", bundles["lm"]), ("classify", bundles["classify"])):
            server = Server(bundle, "--max-concurrent", str(4 * args.clients))
            results[f"{route} load"] = load(server, route, args.clients, args.duration,
                                             checkpoints)
            results[f"{route} load"]["exit_code_after_sigterm"] = server.stop()
        for label, options in (("continuous batching", ()), ("one at a time", ("--max-batch",
                                                                                "1"))):
            server = Server(bundles["lm"], *options)
            results[f"completions, 8 clients, {label}"] = load(server, "completions", 8,
                                                              args.compare_seconds)
            server.stop()
        for label, options in (("batching on", ()), ("batching off",
                                                     ("--no-classify-batching",))):
            server = Server(bundles["classify"], *options)
            results[f"classify, {args.clients} clients, {label}"] = load(
                server, "classify", args.clients, args.compare_seconds)
            server.stop()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
