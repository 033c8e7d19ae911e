"""The exploration notebook runs top to bottom on the CPU, with figures and without stderr noise."""
import re

import nbformat
from nbclient import NotebookClient

from conftest import REPO


def test_explore_notebook_executes_and_shows_figures(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("DEEPLAB_NOTEBOOK_STEPS", "20")  # a user's run trains 400 steps; the figures are the same
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the kernel shares the cores with the other test workers
    nb = nbformat.read(REPO / "notebooks" / "explore.ipynb", as_version=4)
    # Run from a copy's folder so that no quickstart checkpoint is picked up: the notebook trains itself.
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    errors = [o for o in outputs if o.output_type == "error"]
    assert not errors, [(e.ename, e.evalue) for e in errors]
    images = [o for o in outputs if o.output_type == "display_data" and "image/png" in o.get("data", {})]
    assert len(images) >= 4  # toy samples, predictions, MS/CRF before-after, the ablation plot
    markdown = "".join(o.get("data", {}).get("text/markdown", "") for o in outputs if o.output_type == "display_data")
    assert "receptive field (px)" in markdown and "| MS + flip + CRF |" in markdown
    assert "+MS/flip+CRF (%)" in markdown  # the ablation report
    assert "| band width (px) | before CRF (%) | after CRF (%) | gain (points) |" in markdown  # boundaries
    assert "| V3 (bilinear x16) |" in markdown and "| V3+ (decoder) |" in markdown
    assert "bootstrap interval over its 24 images" in markdown and "| 1 | toy_val_" in markdown  # per-image ranking
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "val mIoU over the whole split" in text
    noise = [o.get("text", "") for o in outputs if o.output_type == "stream" and o.name == "stderr"]
    assert not noise, noise  # no warnings or log lines in the cells
    fields = re.findall(r"\| top-left \| (\d+) x (\d+) \| 769 \|", markdown)
    assert len(fields) == 2 and int(fields[0][0]) < 769 and fields[1] == ("769", "769")  # what pooling adds
