"""The device-resident data path: whole-batch augmentation as one affine resampling, index loaders.

Every Trainer run takes this path by default, on the CPU too; these tests run it on the CPU, which
exercises the same code: the loaders yield indices, ``on_after_batch_transfer`` gathers and augments.
"""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from smallmed import SmallMedClassifier
from smallmed.datamodules import NpzDataModule
from smallmed.datamodules.device_batches import affine_matrices, augment_batch, centre_crop
from smallmed.datamodules.transforms import eval_transform
from tests.plain_module import quiet_trainer


def _shapes() -> torch.Tensor:
    image = torch.zeros(1, 1, 40, 40, dtype=torch.uint8)
    image[..., 5:15, 8:30] = 200
    image[..., 20:35, 10:14] = 100
    return image


@pytest.mark.parametrize("angle", [0.0, 10.0, -7.0])
@pytest.mark.parametrize("flip", [False, True])
def test_one_affine_resampling_matches_rotate_flip_crop(angle, flip):
    """The composed matrix reproduces torchvision's rotate -> flip -> crop (up to its uint8 rounding)."""
    image, stored, size, top, left = _shapes(), 40, 32, 3, 5
    expected = TF.rotate(image, angle, interpolation=TF.InterpolationMode.BILINEAR)
    if flip:
        expected = TF.horizontal_flip(expected)
    expected = expected[..., top : top + size, left : left + size].float()
    theta = affine_matrices(torch.tensor([[top, left]]), torch.tensor([angle]), torch.tensor([flip]), stored, size)
    grid = F.affine_grid(theta, [1, 1, size, size], align_corners=False)
    got = F.grid_sample(image.float(), grid, align_corners=False)
    assert (got - expected).abs().max() <= (0.51 if angle else 1e-3)


def test_without_rotation_and_flip_the_batch_is_exact_integer_crops():
    images = torch.randint(0, 256, (8, 3, 36, 36), dtype=torch.uint8)
    out = augment_batch(images, 32, rotation=0, hflip=False, generator=torch.Generator().manual_seed(0))
    assert out.dtype == torch.float32 and out.shape == (8, 3, 32, 32)
    for image, crop in zip(images, out):
        pixels = (crop * 255).round().to(torch.uint8)
        found = [(t, l) for t in range(5) for l in range(5) if torch.equal(image[:, t : t + 32, l : l + 32], pixels)]
        assert len(found) == 1


def test_batch_draws_differ_per_image_and_follow_the_generator():
    images = torch.randint(0, 256, (16, 1, 40, 40), dtype=torch.uint8).expand(16, 1, 40, 40).clone()
    images[:] = images[0]
    a = augment_batch(images, 32, generator=torch.Generator().manual_seed(1))
    b = augment_batch(images, 32, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert len({tuple(x.flatten()[:64].tolist()) for x in a}) > 8  # the same image, augmented differently


def test_centre_crop_equals_the_per_image_eval_transform():
    images = torch.randint(0, 256, (4, 1, 37, 37), dtype=torch.uint8)
    assert torch.equal(centre_crop(images, 32), torch.stack([eval_transform(32)(x) for x in images]))


class _Spy(L.Callback):
    """Records what the model receives in each stage."""

    def __init__(self) -> None:
        self.seen: dict[str, list[torch.Tensor]] = {"train": [], "val": [], "test": []}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen["train"].append(batch[0])

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self.seen["val"].append(batch[0])

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self.seen["test"].append(batch[0])


def _fit_and_test(path, resident: bool | None):
    torch.manual_seed(0)
    dm = NpzDataModule(str(path), train_size=12, image_size=32, batch_size=4, device_resident=resident)
    model = SmallMedClassifier("test_resnet", num_classes=2, pretrained=False)
    spy = _Spy()
    trainer = quiet_trainer(max_epochs=2, callbacks=[spy])
    trainer.fit(model, datamodule=dm)
    metrics = trainer.test(model, datamodule=dm, verbose=False)[0]
    return dm, spy, metrics, model


def test_resident_module_feeds_augmented_floats_and_exact_eval_crops(make_npz):
    path = make_npz(train=(8, 8), val=(4, 4), test=(4, 4), size=28)
    dm, spy, metrics, model = _fit_and_test(path, resident=True)
    assert dm.uses_device_batches() and dm._index_loaders == {"train", "val", "test"}
    train = torch.cat(spy.seen["train"])  # 2 epochs x 12 images
    assert train.dtype == torch.float32 and train.shape == (24, 1, 32, 32) and 0 <= train.min() and train.max() <= 1
    expected_test = torch.stack([eval_transform(32)(x) for x in dm.splits["test"].images])
    assert torch.equal(torch.cat(spy.seen["test"]), expected_test)
    assert torch.equal(torch.cat(spy.seen["val"])[: len(dm.splits["val"].labels)], torch.stack([eval_transform(32)(x) for x in dm.splits["val"].images]))
    # The same weights score the same on the per-image loaders: the eval path is unchanged.
    per_image = NpzDataModule(str(path), train_size=12, image_size=32, device_resident=False)
    again = quiet_trainer().test(model, datamodule=per_image, verbose=False)[0]
    assert again["test/auroc"] == pytest.approx(metrics["test/auroc"], abs=1e-6)


def test_default_is_device_resident_under_a_trainer_even_on_the_cpu(make_npz):
    dm, spy, _, _ = _fit_and_test(make_npz(train=(8, 8), val=(4, 4), test=(4, 4)), resident=None)
    assert dm.uses_device_batches() and dm._index_loaders == {"train", "val", "test"}
    assert torch.cat(spy.seen["train"]).dtype == torch.float32  # augmented on the device, as a batch


def test_default_loaders_yield_images_without_a_trainer(make_npz):
    """Code outside Lightning that iterates the loaders gets images, not indices into held splits."""
    dm = NpzDataModule(str(make_npz()), train_size=12, image_size=32, batch_size=4)
    dm.setup("fit")
    images, _ = next(iter(dm.train_dataloader()))
    assert images.dtype == torch.uint8 and images.shape == (4, 1, 32, 32)


def test_per_image_path_when_turned_off(make_npz):
    dm, spy, _, _ = _fit_and_test(make_npz(train=(8, 8), val=(4, 4), test=(4, 4)), resident=False)
    assert not dm.uses_device_batches() and dm._index_loaders == set()
    assert torch.cat(spy.seen["train"]).dtype == torch.uint8


def test_resident_loader_is_plain_indices_without_a_trainer(make_npz):
    dm = NpzDataModule(str(make_npz()), train_size=12, image_size=32, batch_size=4, device_resident=True)
    dm.setup("fit")
    indices, labels = next(iter(dm.train_dataloader()))
    assert indices.dtype == torch.int64 and indices.shape == (4,)
    assert torch.equal(labels, torch.as_tensor(dm.splits["train"].labels)[indices])


def test_linear_probe_head_sees_images_through_resident_loaders(make_npz):
    """LP-FT's probe makes its own pass over the training data; it must get images, not indices."""
    from smallmed.callbacks import HeadReparameterization

    dm = NpzDataModule(str(make_npz(train=(8, 8), val=(4, 4), test=(4, 4))), train_size=12, image_size=32,
                       batch_size=4, device_resident=True)
    model = SmallMedClassifier("test_resnet", num_classes=2, pretrained=False)
    head = HeadReparameterization(mode="linear_probe")
    quiet_trainer(max_epochs=1, callbacks=[head]).fit(model, datamodule=dm)
    assert dm._index_loaders >= {"train"}
