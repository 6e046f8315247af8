"""Whether a finished training learned anything, from its history rows (reports/train/history.csv's).

A training can end with finite numbers and a useless model: `train.optimizer=sgd
train.learning_rate=1000000` trains 3 epochs at 10% validation accuracy, loss 14.5, past the NaN
guard. The train stage then fails instead of saving it (docs/reliability.md), since evaluate and
the figures would spend their time on a model that guesses.
"""

from __future__ import annotations

import math
from pathlib import Path

# Fashion-MNIST's classes: guessing is right one time in 10.
CLASSES = 10
CHANCE_ACCURACY = 1 / CLASSES
# A score counts as chance when it is within 3 standard errors of what guessing scores on that many
# validation images: 0.19 on 100 images, 0.134 on 500, 0.113 on 5,000. A guesser scores above it
# about 0.1% of the time.
CHANCE_MARGIN_ERRORS = 3.0
# On fewer validation images the score is too noisy to fail a stage on (on 20, a model of true
# accuracy 0.3 scores 0.2 or less one time in 4): the accuracy rule is then not applied.
MIN_JUDGED_IMAGES = 100


def chance_limit(validation_images: int) -> float:
    """The highest validation accuracy that is still chance on this many images."""
    spread = math.sqrt(CHANCE_ACCURACY * (1 - CHANCE_ACCURACY) / validation_images)
    return CHANCE_ACCURACY + CHANCE_MARGIN_ERRORS * spread


def learned_nothing(rows: list[dict[str, float]], validation_images: int) -> str:
    """Why the training of these history rows learned nothing, in plain words; '' when it learned."""
    reasons = []
    last = rows[-1]
    accuracy = last.get("val_accuracy", math.nan)
    if (
        validation_images >= MIN_JUDGED_IMAGES
        and math.isfinite(accuracy)
        and accuracy <= (limit := chance_limit(validation_images))
    ):
        reasons.append(
            f"validation accuracy {accuracy:.3f} after {len(rows)} epoch(s) is chance (guessing scores "
            f"{CHANCE_ACCURACY:.2f}; up to {limit:.3f} on {validation_images} images)"
        )
    if len(rows) >= 2 and min(row["loss"] for row in rows[1:]) >= rows[0]["loss"]:
        reasons.append(
            f"the training loss never fell below its first epoch's {rows[0]['loss']:.4g} "
            f"(last {last['loss']:.4g})"
        )
    return "; ".join(reasons)


def refusal(reason: str, model_file: Path) -> str:
    """The stage's last line for a training that learned nothing: why, what was kept, what to try."""
    kept = (
        f"{model_file} is still the previous run's" if model_file.exists() else f"no {model_file} was written"
    )
    return (
        f"training learned nothing: {reason}; the model was not saved ({kept}): change train.learning_rate "
        f"(too high diverges, too low barely moves), or train for more epochs or on more data"
    )
