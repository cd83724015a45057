"""`lmforge plugins install` and `uninstall`, run in a throwaway environment layered on this one."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sysconfig
import textwrap
import venv
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version
from pathlib import Path

import pytest

from lmforge.cli.plugin_admin import _write_constraints

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "lmforge-sqlite"
# the project's environment may hold the example itself (`make install` puts it there); a copy
# under another distribution name stays distinct from it, so uninstalling the copy removes it
COPY = "lmforge-sqlite-copy"

EXPLODES = 'raise RuntimeError("this plugin explodes on import")\n'

BROKEN_BACKEND = '''
    """A build backend whose metadata prepares but whose wheel never builds."""
    import os


    def get_requires_for_build_wheel(config_settings=None):
        return []


    def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
        name = "broken_build-0.1.dist-info"
        os.makedirs(os.path.join(metadata_directory, name))
        with open(os.path.join(metadata_directory, name, "METADATA"), "w") as f:
            f.write("Metadata-Version: 2.1\\nName: broken-build\\nVersion: 0.1\\n")
        return name


    def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
        raise RuntimeError("this package refuses to build")
'''


def _package(root: Path, name: str, files: dict[str, str]) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    for file, text in files.items():
        (folder / file).write_text(textwrap.dedent(text), encoding="utf-8")
    return folder


def _setuptools_package(root: Path, name: str, version: str, source: str,
                        plugin: str | None = None) -> Path:
    """A one-module package (module `name` with `_` for `-`), declaring the entry point
    `plugin` when given."""
    module = name.replace("-", "_")
    entry_points = f'[project.entry-points.lmforge]\n{plugin} = "{module}"' if plugin else ""
    return _package(root, name, {
        "pyproject.toml": f"""
            [build-system]
            requires = ["setuptools"]
            build-backend = "setuptools.build_meta"

            [project]
            name = "{name}"
            version = "{version}"

            [tool.setuptools]
            py-modules = ["{module}"]
        """ + entry_points,
        f"{module}.py": source,
    })


@pytest.fixture
def env(tmp_path) -> Path:
    """A new virtual environment that installs into its own site-packages and sees this one's
    packages (lmforge, torch, pip, setuptools) behind them. `--system-site-packages` would not do:
    this environment is itself a venv, and that option shows the base interpreter's packages."""
    root = tmp_path / "env"
    venv.create(root, with_pip=False)
    own_site = subprocess.run(
        [root / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True, text=True, check=True).stdout.strip()
    ours = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
    (Path(own_site) / "_project.pth").write_text(
        "".join(f"import site; site.addsitedir({path!r})\n" for path in sorted(ours)))
    return root


# pip reads no index (all it needs is installed) and so builds without isolation; it reads
# PIP_NO_BUILD_ISOLATION inverted: 0 turns isolation off
PIP_OFFLINE = {"PIP_NO_INDEX": "1", "PIP_NO_BUILD_ISOLATION": "0"}


def run_in(env: Path, *args: str, **environ: str) -> subprocess.CompletedProcess:
    """`python ARGS` in `env`, offline, with these environment variables set."""
    return subprocess.run([env / "bin" / "python", *args], capture_output=True, text=True,
                          env={**os.environ, **PIP_OFFLINE, **environ}, timeout=300)


def lmforge(env: Path, *args: str, load: str = "", **environ: str) -> subprocess.CompletedProcess:
    """`python -m lmforge ARGS` in `env`, loading the third-party plugins `load` names."""
    return run_in(env, "-m", "lmforge", *args, LMFORGE_LOAD_PLUGINS=load, **environ)


def refusals(env: Path, *commands: tuple[str, ...]) -> list[subprocess.CompletedProcess]:
    """Several lmforge commands at once, each in its own process (each start loads torch)."""
    with ThreadPoolExecutor(len(commands)) as pool:
        return list(pool.map(lambda args: lmforge(env, *args), commands))


def state(env: Path) -> tuple[list[tuple[str, str]], list[str]]:
    """The distributions `env` sees and the files in its own site-packages."""
    script = ("import json, sysconfig, os; from importlib.metadata import distributions; "
              "print(json.dumps([sorted([d.metadata['Name'], d.version] for d in distributions()), "
              "sorted(os.listdir(sysconfig.get_path('purelib')))]))")
    dists, files = json.loads(run_in(env, "-c", script).stdout)
    return [tuple(d) for d in dists], files


@pytest.fixture
def example_copy(tmp_path) -> Path:
    """The example plugin's source, renamed to COPY (and built here, not in the repository)."""
    folder = tmp_path / "lmforge-sqlite"
    shutil.copytree(EXAMPLE, folder, ignore=shutil.ignore_patterns("build", "*.egg-info",
                                                                  "__pycache__"))
    pyproject = folder / "pyproject.toml"
    text = pyproject.read_text(encoding="utf-8")
    assert 'name = "lmforge-sqlite"' in text
    pyproject.write_text(text.replace('name = "lmforge-sqlite"', f'name = "{COPY}"'),
                         encoding="utf-8")
    return folder


def test_install_shows_the_plugin_and_uninstall_removes_it(env, example_copy):
    before = state(env)
    installed = lmforge(env, "plugins", "install", str(example_copy))
    assert installed.returncode == 0, installed.stderr
    assert f"installed {COPY} 0.1.0" in installed.stdout
    assert "sqlite" in installed.stdout and "data_source:sqlite" in installed.stdout
    listing = json.loads(lmforge(env, "plugins", "list", "--json", load=COPY).stdout)
    sqlite = next(p for p in listing["plugins"] if p["distribution"] == COPY)
    assert sqlite["name"] == "sqlite"
    assert sqlite["components"] == [{"kind": "data_source", "name": "sqlite"}]
    assert (COPY, "0.1.0") in state(env)[0]

    removed = lmforge(env, "plugins", "uninstall", COPY)
    assert removed.returncode == 0, removed.stderr
    assert f"uninstalled {COPY} 0.1.0 (plugins: sqlite)" in removed.stdout
    assert state(env) == before


def test_editable_install_links_the_source_folder(env, example_copy):
    installed = lmforge(env, "plugins", "install", "--editable", str(example_copy))
    assert installed.returncode == 0, installed.stderr
    assert "data_source:sqlite" in installed.stdout
    direct_url = run_in(env, "-c", f"from importlib.metadata import distribution; "
                                   f"print(distribution({COPY!r}).read_text('direct_url.json'))")
    assert json.loads(direct_url.stdout)["dir_info"] == {"editable": True}
    assert lmforge(env, "plugins", "uninstall", COPY).returncode == 0


def test_a_package_that_does_not_build_installs_nothing(env, example_copy, tmp_path):
    broken = _package(tmp_path, "broken-build", {
        "pyproject.toml": """
            [build-system]
            requires = []
            build-backend = "backend"
            backend-path = ["."]

            [project]
            name = "broken-build"
            version = "0.1"
        """,
        "backend.py": BROKEN_BACKEND,
    })
    before = state(env)
    result = lmforge(env, "plugins", "install", str(example_copy), str(broken))
    assert result.returncode == 1
    assert "this package refuses to build" in result.stderr
    assert "the environment is as it was" in result.stderr
    assert state(env) == before


def test_a_plugin_that_does_not_load_is_uninstalled_again(env, tmp_path):
    exploding = _setuptools_package(tmp_path, "lmforge-explodes", "0.2", EXPLODES, "explodes")
    before = state(env)
    result = lmforge(env, "plugins", "install", str(exploding))
    assert result.returncode == 1
    assert ("plugin 'explodes' (lmforge-explodes 0.2, entry point explodes = lmforge_explodes) "
            "failed at import: RuntimeError: this plugin explodes on import") in result.stderr
    assert "the environment is as it was" in result.stderr
    assert state(env) == before


def test_a_broken_upgrade_puts_the_previous_version_back(env, tmp_path):
    working = _setuptools_package(tmp_path / "v1", "lmforge-upgraded", "0.1",
                                  '"""A plugin with no components."""\n', "upgraded")
    wheels = tmp_path / "wheels"
    built = run_in(env, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(wheels),
                   str(working))
    assert built.returncode == 0, built.stderr
    wheel = next(wheels.glob("*.whl"))
    assert run_in(env, "-m", "pip", "install", "--no-deps", str(wheel)).returncode == 0
    before = state(env)
    assert ("lmforge-upgraded", "0.1") in before[0]
    upgrade = _setuptools_package(tmp_path / "v2", "lmforge-upgraded", "0.2", EXPLODES, "upgraded")
    # the previous version is put back from where pip finds it: here, that wheel
    result = lmforge(env, "plugins", "install", str(upgrade), PIP_FIND_LINKS=str(wheels))
    assert result.returncode == 1
    assert "installed lmforge-upgraded 0.2, but it does not load" in result.stderr
    assert "the environment is as it was" in result.stderr
    assert state(env) == before


def test_a_package_without_plugins_is_uninstalled_again(env, tmp_path):
    plain = _setuptools_package(tmp_path, "not-a-plugin", "0.2", "VALUE = 1\n")
    before = state(env)
    result = lmforge(env, "plugins", "install", str(plain))
    assert result.returncode == 1
    assert "not-a-plugin 0.2: not an lmforge plugin" in result.stderr
    assert state(env) == before


def test_uninstall_refuses_lmforge_its_builtins_and_unknown_names(env, tmp_path):
    before = state(env)
    itself, builtin, unknown, not_a_folder = refusals(
        env, ("plugins", "uninstall", "lmforge"),
        ("plugins", "uninstall", "lmforge.plugins.data.dedup"),
        ("plugins", "uninstall", "numpy"),
        ("plugins", "install", "-e", str(tmp_path / "nowhere")))
    assert itself.returncode == 2 and "refusing to uninstall lmforge itself" in itself.stderr
    assert builtin.returncode == 2
    assert "'lmforge.plugins.data.dedup' is a built-in plugin" in builtin.stderr
    assert unknown.returncode == 2
    assert "'numpy' is not an installed plugin distribution; installed:" in unknown.stderr
    assert not_a_folder.returncode == 2 and "not a folder" in not_a_folder.stderr
    assert state(env) == before


def test_constraints_pin_the_installed_torch_and_lmforge(tmp_path):
    pins = _write_constraints(tmp_path).read_text(encoding="utf-8").splitlines()
    assert pins == [f"torch=={version('torch')}", f"lmforge=={version('lmforge')}"]
