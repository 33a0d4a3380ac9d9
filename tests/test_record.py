"""training/record.py: the script that files a finished run into training/<name>/."""
import json

from conftest import load_script
from PIL import Image


def test_a_resumed_runs_log_counts_each_step_once_with_the_rerun_entry(tmp_path):
    lines = [{"step": s, "d_loss": 1.0, "g_loss": 2.0} for s in (10, 20, 30)]  # killed after 30
    lines += [{"resumed_from": 20}]                                             # checkpoint at 20
    lines += [{"step": s, "d_loss": 0.5, "g_loss": 1.5} for s in (30, 40)]
    lines += [{"done": True, "step": 40, "d_loss": 0.5, "g_loss": 1.5}]
    log = tmp_path / "log.jsonl"
    log.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    record = load_script("training/record.py", "record")
    rows = record.step_rows(log)
    assert [r["step"] for r in rows] == [10, 20, 30, 40]
    assert rows[2]["d_loss"] == 0.5  # step 30 as re-run after the resume
    record.loss_curve(log, tmp_path / "losses.png")
    assert Image.open(tmp_path / "losses.png").size == (640, 320)


def test_the_real_sample_is_64_training_images_in_the_sample_grids_layout(tmp_path):
    import numpy as np
    record = load_script("training/record.py", "record")
    record.real_sample("synthetic:100", {"arch": "dcgan64", "net": {"channels": 3}}, tmp_path / "real.png")
    im = np.asarray(Image.open(tmp_path / "real.png"))
    assert im.shape == (8 * 66 + 2, 8 * 66 + 2, 3)          # 8x8 images of 64x64, 2-pixel gaps
    assert im[2:66, 2:66].std() > 0 and not np.array_equal(im[2:66, 2:66], im[2:66, 68:132])
