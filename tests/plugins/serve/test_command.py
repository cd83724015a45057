"""`lmforge serve` through the plugin host: the built-in onnx server, and clear errors before
anything listens."""

import json

from lmforge.plugins.serve import OnnxServer
from lmforge.settings import NoSettings

from ...cli.test_cli import run


def test_the_onnx_server_is_registered(registry):
    assert registry.get("server", "onnx").component is OnnxServer


def test_serve_refuses_a_missing_or_tampered_bundle_naming_it(tmp_path, lm_folder):
    done = run("serve", str(tmp_path / "nowhere"))
    assert done.returncode == 2 and "no such bundle folder" in done.stderr
    manifest = json.loads((lm_folder / "lmforge.json").read_text())
    (lm_folder / "tokenizer.json").write_text("{}")
    done = run("serve", str(lm_folder))
    assert done.returncode == 2
    assert "tokenizer.json" in done.stderr and manifest["files"]["tokenizer.json"] in done.stderr


def test_serve_refuses_an_unknown_server(lm_folder):
    done = run("serve", str(lm_folder), "--server", "nope")
    assert done.returncode == 2 and "nope" in done.stderr


def test_serve_leaves_a_core_to_the_http_side_unless_told(monkeypatch, lm_folder):
    from lmforge.plugins.runtime import bundle as bundle_module
    from lmforge.plugins.serve import app, process

    threads = []
    monkeypatch.setattr(bundle_module, "available_cores", lambda: 4)
    monkeypatch.setattr(app, "create_app", lambda bundle, settings: threads.append(
        bundle.threads))
    monkeypatch.setattr(process, "run_server", lambda *args: None)
    OnnxServer(NoSettings()).serve(lm_folder)
    OnnxServer(NoSettings()).serve(lm_folder, threads=1)
    monkeypatch.setattr(bundle_module, "available_cores", lambda: 1)
    OnnxServer(NoSettings()).serve(lm_folder)
    assert threads == [3, 1, 1]
