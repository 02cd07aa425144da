"""The predict stage: instances from the predicted class maps, models rebuilt from their checkpoints."""

import numpy as np

from unseg.predict import instances_from_probabilities


def test_instances_from_probabilities_components_and_scores():
    probabilities = np.zeros((3, 6, 6), dtype=np.float32)
    probabilities[0] = 1.0
    for top, left, value in [(0, 0, 0.9), (4, 4, 0.7)]:
        probabilities[:, top : top + 2, left : left + 2] = 0
        probabilities[1, top : top + 2, left : left + 2] = value
        probabilities[0, top : top + 2, left : left + 2] = 1 - value
    instances = instances_from_probabilities(probabilities, min_area=2)
    assert [(m.sum(), c, round(s, 3)) for m, c, s in instances] == [(4, 1, 0.9), (4, 1, 0.7)]
