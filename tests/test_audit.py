"""Audit pages: galleries of the intermediate masks."""

import numpy as np
from PIL import Image

from unseg.io import encode_rle, write_json


def test_audit_masks_shows_panels_per_k_and_per_eigenvector(tmp_path):
    from unseg.audit import audit_masks

    Image.fromarray(np.full((8, 8, 3), 90, dtype=np.uint8)).save(tmp_path / "a.png")
    square = np.zeros((8, 8), dtype=bool)
    square[2:5, 2:5] = True
    masks = [{"image_id": 1, "segmentation": encode_rle(square), "score": 1.0, "k": k, "eigen_index": index}
             for k, index in [(2, 1), (2, 1), (2, 2), (3, -1)]]
    write_json(tmp_path / "masks.json", masks)
    page = audit_masks([(1, "a", str(tmp_path / "a.png"))], tmp_path / "masks.json", tmp_path / "audit")
    text = page.read_text()
    assert "k=3: 1 masks" in text and "eigenvector 1: 2 masks" in text and "eigenvector 2: 1 masks" in text
    assert len(list((tmp_path / "audit").glob("*.png"))) == 4  # image + k=3 + two eigenvectors
