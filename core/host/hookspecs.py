"""The hooks a plugin may implement; each registration hook receives a `register` callback."""

import pluggy

hookspec = pluggy.HookspecMarker("lmforge")

# Every registration hook is called once, when the registry is built, with a callback
# `register(name, component, *, settings=None)`. `component` is a class whose constructor takes
# one validated settings object; `settings` (default: the class's `Settings` attribute) is a
# pydantic model declaring every setting with its type and default. The core records which plugin
# and distribution registered each name and rejects a name registered twice.


@hookspec
def register_data_sources(register):
    """Register data sources: classes that stream records `{"text", "label"?, "source"}`."""


@hookspec
def register_preprocessors(register):
    """Register preprocessors: record stream -> record stream (normalize, clean, filter, dedup)."""


@hookspec
def register_tokenizers(register):
    """Register tokenizers: trained on texts, encode and decode, saved to one file."""


@hookspec
def register_models(register):
    """Register models: factories of `torch.nn.Module` for the tasks they support."""


@hookspec
def register_tasks(register):
    """Register tasks (`lm`, `classify`, ...): batches, loss, metrics, prediction."""


@hookspec
def register_trainers(register):
    """Register trainers: fit a model on a task, write the run directory, resume exactly."""


@hookspec
def register_exporters(register):
    """Register exporters (subclasses of `lmforge.Exporter`): turn a run into a deployable bundle
    and prove it matches the run. A config's `export:` section names one (`lmforge run` exports
    at the end); `lmforge export RUN --exporter NAME` runs one on demand."""


@hookspec
def register_servers(register):
    """Register servers (subclasses of `lmforge.Server`): serve an exported bundle over HTTP
    (`lmforge serve BUNDLE`)."""


@hookspec
def register_metrics(register):
    """Register metrics: streaming update/compute over the batches a task scores; a task's
    `metrics` setting names the ones it reports."""


@hookspec
def register_callbacks(register):
    """Register callbacks (subclasses of `lmforge.Callback`): they watch training, and a config
    lists the ones a run uses under `callbacks:`."""


@hookspec
def register_config_sections(register):
    """Register top-level config sections a plugin's commands read (e.g. `sweep`):
    `register(name, settings_class)`. `lmforge config validate` checks them; they stay out of
    the run's config hash, since training never reads them."""


@hookspec
def register_commands(cli):
    """Add subcommands to the `lmforge` command; `cli` is the root `click.Group`."""
