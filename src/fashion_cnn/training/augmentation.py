"""Augmentation of training batches (random shifts, horizontal flips, random erasing) in a tf.data pipeline.

Every operation works on a whole batch with vectorized TensorFlow ops and stateless random numbers
seeded by (params `seed`, batch number), so a run is repeatable and each epoch sees new variations.
Only the training split goes through here: validation and test images are never augmented.

The images are standardized per pixel, so 0 is the mean training image at every pixel: shifting
pads with 0 and erasing fills with 0, i.e. with the mean image (Zhong et al. 2017's "mean" fill).
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from fashion_cnn.training.config import AugmentationConfig

# Random erasing's rectangle (Zhong et al. 2017): 2% to 40% of the image, aspect ratio 0.3 to 1/0.3.
ERASE_AREA = (0.02, 0.4)
ERASE_ASPECT = (0.3, 1 / 0.3)
# The value of the mean image in standardized units.
FILL_VALUE = 0.0


def shift(images: tf.Tensor, max_pixels: int, seed: tf.Tensor) -> tf.Tensor:
    """Move each image by its own random offset of up to `max_pixels` along each axis (pad, then crop)."""
    batch = tf.shape(images)[0]
    height, width = images.shape[1], images.shape[2]
    padding = [[0, 0], [max_pixels, max_pixels], [max_pixels, max_pixels], [0, 0]]
    padded = tf.pad(images, padding, constant_values=FILL_VALUE)  # (batch, h + 2m, w + 2m, channels)
    offsets = tf.random.stateless_uniform(
        (batch, 2), seed, minval=0, maxval=2 * max_pixels + 1, dtype=tf.int32
    )
    rows = offsets[:, :1] + tf.range(height)[tf.newaxis, :]  # (batch, height)
    columns = offsets[:, 1:] + tf.range(width)[tf.newaxis, :]  # (batch, width)
    cropped = tf.gather(padded, rows, axis=1, batch_dims=1)  # (batch, height, w + 2m, channels)
    return tf.gather(cropped, columns, axis=2, batch_dims=1)  # (batch, height, width, channels)


def horizontal_flip(images: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Mirror each image left-right with probability 1/2."""
    flip = tf.random.stateless_uniform((tf.shape(images)[0], 1, 1, 1), seed) < 0.5
    return tf.where(flip, tf.reverse(images, axis=[2]), images)


def random_erasing(images: tf.Tensor, probability: float, seed: tf.Tensor) -> tf.Tensor:
    """With `probability`, fill one random rectangle of each image with the mean image (Zhong et al. 2017)."""
    height, width = images.shape[1], images.shape[2]
    # Per image: apply?, area fraction, log aspect ratio, top, left; all uniform in [0, 1).
    draws = tf.random.stateless_uniform((tf.shape(images)[0], 5), seed)
    area = (ERASE_AREA[0] + (ERASE_AREA[1] - ERASE_AREA[0]) * draws[:, 1]) * (height * width)
    low, high = math.log(ERASE_ASPECT[0]), math.log(ERASE_ASPECT[1])
    aspect = tf.exp(low + (high - low) * draws[:, 2])
    # A rectangle taller or wider than the image is clipped to it (a vectorized stand-in for retrying).
    erase_height = tf.clip_by_value(tf.round(tf.sqrt(area * aspect)), 1.0, height)
    erase_width = tf.clip_by_value(tf.round(tf.sqrt(area / aspect)), 1.0, width)
    top = tf.floor(draws[:, 3] * (height - erase_height + 1))
    left = tf.floor(draws[:, 4] * (width - erase_width + 1))
    rows = tf.range(height, dtype=tf.float32)[tf.newaxis, :]  # (1, height)
    columns = tf.range(width, dtype=tf.float32)[tf.newaxis, :]  # (1, width)
    in_rows = (rows >= top[:, None]) & (rows < (top + erase_height)[:, None])  # (batch, height)
    in_columns = (columns >= left[:, None]) & (columns < (left + erase_width)[:, None])  # (batch, width)
    applied = (draws[:, 0] < probability)[:, None, None]  # (batch, 1, 1)
    mask = in_rows[:, :, None] & in_columns[:, None, :] & applied  # (batch, height, width)
    return tf.where(mask[..., tf.newaxis], tf.constant(FILL_VALUE, images.dtype), images)


def augment_batch(images: tf.Tensor, augmentation: AugmentationConfig, seed: tf.Tensor) -> tf.Tensor:
    """Shift, flip, then erase (the order of Zhong et al.) one batch (batch, height, width, channels)."""
    shift_seed, flip_seed, erase_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    if augmentation.shift_pixels:
        images = shift(images, augmentation.shift_pixels, shift_seed)
    if augmentation.horizontal_flip:
        images = horizontal_flip(images, flip_seed)
    if augmentation.random_erasing:
        images = random_erasing(images, augmentation.random_erasing, erase_seed)
    return images


def epoch_order(count: int, seed: int, epoch: tf.Tensor) -> tf.Tensor:
    """The order of the training images in `epoch`: a permutation drawn from (seed, epoch) alone."""
    keys = tf.random.stateless_uniform((count,), tf.stack([tf.constant(seed, tf.int64), epoch]))
    return tf.argsort(keys, stable=True)


def training_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    epochs: int,
    augmentation: AugmentationConfig,
    seed: int,
    first_epoch: int = 0,
) -> tf.data.Dataset:
    """Epochs `first_epoch` to `epochs` - 1 of shuffled (and augmented) training batches, in order.

    Fit it with steps_per_epoch: the dataset holds every epoch so that Keras keeps one iterator for
    the whole run. Each epoch's order and each batch's augmentations are drawn from (seed, epoch)
    and (seed, batch number) only, so every epoch is shuffled anew and a run resumed at
    `first_epoch` sees exactly the batches an uninterrupted run would. (Keras's own shuffle of
    NumPy arrays draws the same order in every epoch once the global seed is set.)
    """
    count = len(labels)
    steps_in_epoch = math.ceil(count / batch_size)
    images_tensor = tf.constant(images)  # (count, 28, 28, 1)
    labels_tensor = tf.constant(labels)  # (count,) or (count, classes) one-hot
    batch_seed = tf.constant(seed, tf.int64)

    def epoch_batches(epoch: tf.Tensor) -> tf.data.Dataset:
        batches = tf.data.Dataset.from_tensor_slices(epoch_order(count, seed, epoch)).batch(batch_size)
        first_step = epoch * steps_in_epoch
        return batches.enumerate().map(lambda index, indices: (first_step + index, indices))

    def load(step: tf.Tensor, indices: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        batch = tf.gather(images_tensor, indices)
        if augmentation.enabled:
            batch = augment_batch(batch, augmentation, tf.stack([batch_seed, step]))
        return batch, tf.gather(labels_tensor, indices)

    order = tf.data.Dataset.range(first_epoch, epochs).flat_map(epoch_batches)
    # A plain map: the batch ops are vectorized already, and prefetch overlaps them with training.
    return order.map(load).prefetch(tf.data.AUTOTUNE)
