"""The papers/ reproductions stay runnable: each script's --quick mode end to end."""
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_hopfield_reproduction_quick(tmp_path):
    out = tmp_path / "hopfield"
    subprocess.run([sys.executable, str(REPO / "papers" / "hopfield" / "run.py"), "--quick", "--out", str(out)],
                   check=True, cwd=REPO, capture_output=True, timeout=600)
    results = json.loads((out / "results.json").read_text())
    assert results
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert {"basins.png", "capacity.png", "digits.png"} <= set(pngs)
