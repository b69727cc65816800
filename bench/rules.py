"""A unit for your own rule, measured: for each target rule, the held-out score of the unit it finds beside the
shipped atlas's own row for the same property, and how long a visitor waits for it in the Inside tab (`AtlasView.rule`:
the rule's row and its unit over a prompt and two held-out passages), on `lmdemo.rules.RULE_TOKENS` tokens a part of
the model's corpus, as `python -m lmdemo atlas MODEL --rule` scores it too.

    python bench/rules.py              # the two targets, and the speaker rule as the atlas defines a speaker's line
    python bench/rules.py --threads 2  # as the CLI runs on 2 cores (default: 1, as the app gives each request)

"here" is the atlas's own unit for the property, scored in its own direction on the rule's held-out text with the
rule's truth: the two units compared on the same tokens (the held-out score of one unit moves by a few hundredths
between samples of a few dozen numbers).

"first" is the rule asked the first time, the model already loaded; for a model's first rule that includes reading
its corpus, the trained and the random model over both parts and ranking every unit's values (`read_parts`), then the
rule itself (matching in a child process, choosing, scoring, and reading the texts shown). "again" is the same rule
asked once more: what every rule after a model's first costs, over the readings the tab keeps per model.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lmdemo.atlas import Unit, column_scores, read_atlas  # noqa: E402
from lmdemo.rules import parse_rule  # noqa: E402
from lmdemo.web.atlas_view import AtlasView  # noqa: E402
from lmdemo.web.inside import Inside  # noqa: E402
from lmdemo.web.registry import Models  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# (model, the shipped atlas's property the rules stand for, the rules)
TARGETS = (("imdb-word", "number", (r"numbers=\d+",)),
           ("shakespeare-char", "speaker_name", (r"speaker=^[A-Z]+:$", r"after_blank=(?<=\n\n)[A-Z][A-Za-z' ]*:$")))
PROMPT = "ROMEO:\nWhat say you? I have 2 or 3 things to tell.\n"


def machine() -> str:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    name = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name")), "?")
    return f"{name}, torch {torch.__version__} with {torch.get_num_threads()} thread(s)"


def timed(view: AtlasView, inside: Inside, name: str, written: str) -> tuple:
    """The rule's row and the seconds the tab's request took."""
    began = time.perf_counter()
    found, _ = view.rule(inside.text(None, name, PROMPT, 0), name, written)
    return found.rows[0], time.perf_counter() - began


def own_unit_here(view: AtlasView, models: Models, name: str, written: str, own: dict) -> float:
    """The atlas's unit for the property scored on the held-out text the rule was scored on, by the rule's truth."""
    generator = models.generator(name)
    readings = view.readings.read(generator, lambda: sys.exit("the rule's readings are gone"))
    prop = parse_rule(written).as_property(readings.pieces[1])
    truth = torch.from_numpy(numpy.concatenate([prop.truth(pieces) for pieces in readings.pieces[1]]))[:, None]
    column = Unit(own["layer"] - 1, own["quantity"], own["unit"]).column(generator.config.hidden_size)
    return float(column_scores(own["sign"] * readings.trained.score[:, [column]], truth, [prop.kind])[0, 0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1, as the app gives each "
                                                             "request on 2 cores)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(machine())
    print(f"{'model':<17} {'rule':<40} {'unit':<9} {'score':>6} {'random':>6} | {'atlas row':<13} {'unit':<9} "
          f"{'score':>6} {'random':>6} {'here':>6} | {'first s':>7} {'again s':>7}")
    for name, property_name, rules in TARGETS:
        folder = ROOT / "checkpoints" / name
        own = next(entry for entry in read_atlas(folder)["properties"] if entry["property"] == property_name)
        models = Models({name: str(folder)})
        models.generator(name)  # loaded before the clock starts, as a server has its models
        view, inside = AtlasView(models), Inside(models)
        for written in rules:
            row, first = timed(view, inside, name, written)
            _, again = timed(view, inside, name, written)
            here = own_unit_here(view, models, name, written, own)
            print(f"{name:<17} {written:<40} {row.layer} {row.quantity} {row.unit:<5} {row.score:>6.3f} "
                  f"{row.baseline:>6.3f} | {property_name:<13} {own['layer']} {own['quantity']} {own['unit']:<5} "
                  f"{own['score']:>6.3f} {own['baseline']:>6.3f} {here:>6.3f} | {first:>7.1f} {again:>7.1f}")


if __name__ == "__main__":
    main()
