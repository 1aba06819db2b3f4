"""The tutorial notebooks run end to end (nbclient), offline on the embedded model, and print
sensible numbers: training_an_sae.ipynb trains a small SAE that the other two then analyse."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")
pytest.importorskip("ipykernel")
pytest.importorskip("plotly")
pytest.importorskip("pandas")

pytestmark = [pytest.mark.integration, pytest.mark.slow]
NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def execute(name: str, cwd: Path) -> tuple[str, int]:
    """Run a notebook; returns its text output and its number of plotly figures."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                            resources={"metadata": {"path": str(cwd)}}).execute()  # fmt: skip
    text, figures = [], 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            text.append(out.get("text", ""))
            data = out.get("data", {})
            text.append(data.get("text/plain", ""))
            figures += "application/vnd.plotly.v1+json" in data
    return "\n".join(text), figures


def number(pattern: str, text: str) -> float:
    match = re.search(pattern, text)
    assert match, f"{pattern!r} not in the notebook output"
    return float(match.group(1))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    work = tmp_path_factory.mktemp("notebooks")
    mp = pytest.MonkeyPatch()
    mp.setenv("SAEKIT_TUTORIAL_TOKENS", "8192")
    mp.setenv("SAEKIT_TUTORIAL_OUT", str(work / "runs"))
    mp.setenv("SAEKIT_TUTORIAL_SAE", str(work / "runs" / "train"))
    mp.setenv("SAEKIT_TUTORIAL_EVAL_TOKENS", "1024")
    mp.setenv("SAEKIT_TUTORIAL_ROWS", "8")
    mp.setenv("OMP_NUM_THREADS", "2")
    text, figures = execute("training_an_sae.ipynb", work)
    yield work, text, figures
    mp.undo()


def test_training_notebook(trained):
    work, text, figures = trained
    assert number(r"explained variance (\S+), L0", text) > 0.3
    assert number(r"L0 (\S+),", text) == 16.0 and figures == 1
    assert list((work / "runs" / "train").rglob("sae_weights.safetensors"))


def test_evaluating_notebook(trained):
    work, _, _ = trained
    text, figures = execute("evaluating_your_sae.ipynb", work)
    assert number(r"average L0 (\S+),", text) == pytest.approx(16.0, abs=0.5)
    clean, spliced, zero = (number(rf"{k} (\S+)", text) for k in ("clean", "spliced", "zero-ablated"))
    assert clean < spliced < zero  # the SAE keeps most of what zero ablation loses
    assert number(r"ce_loss_recovered\s+(\S+)", text) > 0.3
    assert text.count("Ranks of the answer tokens") == 2 and figures == 2
    assert len(list((work / "tutorial-dashboards").glob("feature_*.html"))) == 10


def test_logit_lens_notebook(trained):
    work, _, _ = trained
    text, figures = execute("logits_lens_with_features.ipynb", work)
    assert "nltk_pos_VBD:" in text and "boy_names:" in text
    assert figures >= 9
    assert len(list((work / "es_plots").glob("*.html"))) == 2
