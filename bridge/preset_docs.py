"""Render docs/presets.md from the preset schema (bridge.config) and the parameter schema
(bridge.params). ``python -m bridge.preset_docs > docs/presets.md`` regenerates it; a test
fails when the committed file differs."""

from __future__ import annotations

import json
import sys
from typing import Any

from bridge.config import PRESET_VERSION, SECTIONS, Opt
from bridge.params import PARAMS, ParamSpec

_INTRO = f"""# Preset files

`sdbridge serve --preset FILE [--set key=value ...]` reads a YAML preset. Every preset starts
with `version: {PRESET_VERSION}`. The whole file is validated before any model loads and **every**
problem is reported at once, each with its field path (`source.kind`, `model.dtype`, `sink.1.name`…),
the bad value and a fix; unknown keys get a did-you-mean.

`--set` overrides any value with a dotted path and a YAML value, applied before validation:

```bash
sdbridge serve --preset presets/cpu-demo.yaml --set prompt="a red fox" --set guidance_scale=1.4 \\
    --set t_index_list=[20,40] --set source.kind=shm --set sink.0.name=sdbridge-out
```

Example presets live in `presets/`: `cpu-demo.yaml` runs anywhere (tiny random-weight model);
`sd-turbo-img2img-512.yaml`, `lcm-lora-sd15.yaml`, `sdxl-turbo-img2img.yaml` and
`sd-turbo-txt2img.yaml` need their weights and a GPU for real-time rates.

`serve --check` validates the preset and this machine's transports (and MIDI mapping) and exits;
`serve --identity` runs the daemon without a model (frames pass through unchanged: checks the
transports and measures the daemon itself); `serve --json-logs` logs one JSON object per line.

While serving, the control command `load_preset` (`sdbridge ctl load-preset FILE`) validates the
new file the same way (nothing changes if it has a problem), then switches parameters, source,
sinks, `fit`, `output_format` and, if the `model` section differs, rebuilds the pipeline (state
`status: rebuilding`; sinks get `fallback_output` meanwhile). `control`, `osc` and `midi` apply
at start-up only.

This page is generated from the schema (`python -m bridge.preset_docs > docs/presets.md`); a test
keeps it in sync.
"""

_TRANSPORTS = """## `source` and `sink`

`source` is one mapping, `sink` is one mapping or a list of them (every sink gets every output
frame, e.g. shared memory for the host app plus PNG files). Each has a `kind` and that
transport's options as sibling keys; options are checked against the transport's constructor, so
a misspelt option is an error with a did-you-mean:

```yaml
source: {kind: shm, name: sdbridge-in}
sink:
  - {kind: shm, name: sdbridge-out}
  - {kind: png, folder: out/frames}
```

Kinds and their options: see `docs/transports.md` and `sdbridge probe`. A transport whose runtime
is missing on this machine (NDI, Spout) is reported by the pre-flight check `serve` runs before
loading the model.
"""


def _cell(text: str) -> str:
    return text.replace("|", "\\|")  # a bare | would split the Markdown table cell


def _default(value: Any) -> str:
    return "null" if value is None else f"`{json.dumps(value)}`"


def _opt_row(opt: Opt) -> str:
    return f"| `{opt.name}` | {_cell(opt.describe_type())} | {_default(opt.default)} | {opt.description} |"


def _param_row(spec: ParamSpec) -> str:
    kind = _cell(spec.type + (f" ({spec.describe_range()})" if spec.describe_range() else ""))
    live = "live" if spec.live else "rebuild"
    return f"| `{spec.name}` | {kind} | {_default(spec.default)} | {live} | {spec.description} |"


def _table(header: str, rows: list[str]) -> list[str]:
    cols = header.count("|") - 1
    return [header, "|" + "---|" * cols, *rows]


def render_preset_docs() -> str:
    lines = [_INTRO, "## Top level", ""]
    lines += _table("| key | type | default | description |", [_opt_row(o) for o in SECTIONS[""]])
    lines += ["", "## Pipeline parameters (top level)", "",
              "The same schema the control protocol uses (`docs/control-protocol.md`). *live* "
              "parameters can change while serving; *rebuild* ones rebuild the pipeline "
              "(`t_index_list` is live when its length stays the same).", ""]
    lines += _table("| key | type | default | live | description |",
                    [_param_row(p) for p in PARAMS])
    for name, opts in SECTIONS.items():
        if not name:
            continue
        lines += ["", f"## `{name}`", ""]
        lines += _table("| key | type | default | description |", [_opt_row(o) for o in opts])
    lines += ["", _TRANSPORTS]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(render_preset_docs())
