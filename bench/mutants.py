"""Run the mutant suite of tests/test_mutants.py and print how many mutants fail and how many are named.

    python bench/mutants.py [-v] [--fresh | --held]   (-v prints each unnamed mutant's message; with --fresh or
                                                       --held, every message. --fresh: the mutants written after the
                                                       checks were tuned; --held: the held-out set written after those)
"""
import contextlib
import io
import os
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
os.environ["NBGRADER_EXECUTION"] = "autograde"
from test_mutants import FRESH, HELD, MUTANTS, named, run_mutant  # noqa: E402

start = time.process_time()
suite = FRESH if "--fresh" in sys.argv else HELD if "--held" in sys.argv else MUTANTS
total, failed, names = Counter(), Counter(), Counter()
warnings.simplefilter("ignore")
for mutant in suite:
    with contextlib.redirect_stdout(io.StringIO()):  # the pass lines of the parts a mutant gets right
        message = run_mutant(mutant)
    total[mutant.chapter] += 1
    failed[mutant.chapter] += message is not None
    names[mutant.chapter] += named(mutant, message)
    if "-v" in sys.argv and (not named(mutant, message) or suite is not MUTANTS):
        print(f"--- {mutant.id}\n{message}\n")
print(f"| chapter | mutants | lose points | named |\n|---|---|---|---|")
for chapter in sorted(total):
    print(f"| {chapter} | {total[chapter]} | {failed[chapter]} | {names[chapter]} |")
n = sum(total.values())
print(f"| all | {n} | {sum(failed.values())} ({100 * sum(failed.values()) / n:.0f} %) | "
      f"{sum(names.values())} ({100 * sum(names.values()) / n:.0f} %) |")
print(f"\nCPU time: {time.process_time() - start:.1f} s")
