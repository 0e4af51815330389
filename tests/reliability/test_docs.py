"""docs/reliability.md quotes the sizes of the corpora and kill chains: check them against the test code."""

from __future__ import annotations

from pathlib import Path

from . import test_bad_input as bad
from . import test_crashes as crashes
from . import test_kill as kill
from . import test_security as security
from . import test_transaction as transaction
from . import test_validation as validation

DOC = Path(__file__).resolve().parents[2] / "docs" / "reliability.md"


def _rows() -> dict[str, str]:
    rows = {}
    for line in DOC.read_text().splitlines():
        cells = [c.strip().strip("*") for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) == 2:
            rows[cells[0]] = cells[1]
    return rows


def test_documented_counts_are_what_the_tests_enumerate() -> None:
    commands = bad._acts_commands()
    clones = sum(1 for cmd, _ in commands if cmd == "clones")
    ensemble = sum(1 for cmd, _ in commands if cmd == "ensemble")
    console, below_a_file = 2, 2  # test_console_script_bad_inputs_are_one_line_exit_2, test_output_below_a_file_is_refused
    total = (clones + ensemble + len(bad.CKPT_CASES) + len(bad.TABLE_CASES) + len(bad.ENSEMBLE_INPUT_CASES)
             + console + below_a_file)
    want = {
        "activation files through `clones`": clones,
        "activation files through `ensemble` (beside a good member)": ensemble,
        "checkpoints through `extract`": len(bad.CKPT_CASES),
        "tables through `report`": len(bad.TABLE_CASES),
        "ensemble tables through `clones --ensemble`": len(bad.ENSEMBLE_INPUT_CASES),
        "through the console script": console,
        "output below a regular file (`clones`, `ensemble`)": below_a_file,
        "bad-input cases in all": total,
        "stages": len(kill.STAGES),
        "kills per stage (default; `MITOSIS_KILLS=N` raises it)": 3,
        "kills per run of the suite": 3 * len(kill.STAGES),
        "`train --force` failures that keep the old run": len(transaction.FORCE_FAILURES),
        "`train --seeds --force` failures that keep every old run": len(transaction.SEEDS_FORCE_FAILURES),
        "`extract --model` and `import` rewrites that fail and keep the earlier file": len(transaction.REWRITE_FAILURES),
        "outputs that are inputs": len(transaction.CLASHES),
        "outputs of the wrong kind, refused before any work": len(transaction.KINDS) + 3,  # + the current directory
        # the table writes that fail, a failing rename, a real tmpfs
        "clones-pair failures that keep both tables": len(transaction.TABLE_FAILURES) + 2,
        "concurrent writers, one per stage, `train --seeds` and `import`": len(transaction.WRITERS),
        "options out of range": len(validation.OPTION_CASES),
        "checkpoint fields through `train --resume`": len(validation.RESUME_CASES),
        "checkpoint fields through `extract`": len(validation.EXTRACT_CASES),
        "activation attributes and values": len(validation._acts_cases()) + 2,  # + huge logits through ensemble
        "table columns of the wrong type or infinite": len(validation.COLUMN_CASES) + 2,  # + an error-inf table through clones
        "table metadata of the wrong shape": len(validation.METADATA_CASES),
        "feature dumps whose arrays do not fit (`import`)": len(validation.DUMP_CASES),
        "image folders of the wrong layout (`extract --model`)": len(validation.IMAGE_CASES),
        "inputs that are not regular files": len(crashes.NOT_REGULAR),
        "writes refused by the file-size limit": 5,  # extract (up front, and inside libhdf5), a checkpoint, the tables, import
        # SIGTERM at moments of a training run, during its loop, and while a table is written
        "SIGTERM moments in train, and one while a table is written": len(crashes.SIGTERM_DELAYS) + 2,
        "SIGTERM moments in `train --seeds`": len(crashes.SEEDS_SIGTERM_DELAYS) + 1,  # + at the first checkpoints
        "control characters in paths": len(crashes.CONTROL_NAMES),
        "MITOSIS_DEBUG values": len(crashes.DEBUG_VALUES),
        "outputs whose folders are not made for bad input": len(crashes.PARENTLESS),
    }
    rows = _rows()
    for label, count in want.items():
        assert rows.get(label) == str(count), (
            f"docs/reliability.md says {rows.get(label)!r} for {label!r}; the tests enumerate {count}")
    assert "Five crafted checkpoints" in DOC.read_text() and len(security.CRAFTED) == 5
