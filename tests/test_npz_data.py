"""NpzDataModule on the real BreastMNIST and on small written files, and the subset sampling under it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from smallmed.datamodules import NpzDataModule, SubsetTooLargeError, class_counts, sample_subset, subset_order

BREAST_TRAIN = (147, 399)  # malignant, normal/benign in the real train split
BREAST_SIZES = {"train": 546, "val": 78, "test": 156}


def setup_dm(path, **kwargs) -> NpzDataModule:
    kwargs.setdefault("image_size", 32)
    dm = NpzDataModule(str(path), **kwargs)
    dm.setup("fit")
    return dm


@pytest.fixture(scope="module")
def breast_arrays(breastmnist):
    with np.load(breastmnist) as data:
        return {k: data[k] for k in data.files}


# --------------------------------------------------------- real BreastMNIST


@pytest.mark.parametrize("n", [2, 10, 50, 100, 200, 294])
def test_balanced_subset_counts(breastmnist, n):
    dm = setup_dm(breastmnist, train_size=n, seed=3)
    assert dm.summary()["train"] == [n // 2, n // 2]
    assert len(dm.train_indices) == n == len(np.unique(dm.train_indices))


def test_balanced_odd_size_gives_first_class_the_remainder(breastmnist):
    assert setup_dm(breastmnist, train_size=51).summary()["train"] == [26, 25]


@pytest.mark.parametrize("n", [20, 50, 100, 300])
def test_stratified_subset_is_proportional(breastmnist, n):
    dm = setup_dm(breastmnist, train_size=n, sampling="stratified", seed=1)
    counts = dm.summary()["train"]
    assert sum(counts) == n
    for count, total in zip(counts, BREAST_TRAIN):
        assert abs(count - n * total / sum(BREAST_TRAIN)) <= 1


def test_random_subset_size(breastmnist):
    dm = setup_dm(breastmnist, train_size=40, sampling="random", seed=0)
    assert len(dm.splits["train"].labels) == 40
    np.testing.assert_array_equal(dm.train_indices, np.sort(np.random.default_rng(0).permutation(546)[:40]))


def test_subsets_are_seeded(breastmnist):
    a = setup_dm(breastmnist, train_size=50, seed=7)
    b = setup_dm(breastmnist, train_size=50, seed=7)
    c = setup_dm(breastmnist, train_size=50, seed=8)
    np.testing.assert_array_equal(a.train_indices, b.train_indices)
    assert torch.equal(a.splits["train"].images, b.splits["train"].images)
    assert not np.array_equal(a.train_indices, c.train_indices)


@pytest.mark.parametrize("sampling", ["balanced", "stratified", "random"])
def test_subsets_are_nested_across_sizes(breastmnist, breast_arrays, sampling):
    for seed in range(3):  # through the data module ...
        small, mid, large = (
            set(setup_dm(breastmnist, train_size=n, seed=seed, sampling=sampling).train_indices) for n in (50, 100, 200)
        )
        assert small < mid < large, f"seed {seed}"
    labels = breast_arrays["train_labels"]
    for seed in range(3, 40):  # ... and straight from the sampler, for many seeds
        small, mid, large = (set(sample_subset(labels, n, seed=seed, sampling=sampling)) for n in (50, 100, 200))
        assert small < mid < large, f"seed {seed}"


def test_subset_images_and_labels_match_the_file(breastmnist, breast_arrays):
    dm = setup_dm(breastmnist, train_size=10, seed=0, image_size=28, resize_to=28)
    idx = dm.train_indices
    np.testing.assert_array_equal(dm.splits["train"].labels, breast_arrays["train_labels"][idx])
    np.testing.assert_array_equal(dm.splits["train"].images[:, 0].numpy(), breast_arrays["train_images"][idx])


@pytest.mark.parametrize("n", [10, 100, None])
def test_val_and_test_are_untouched_whatever_n(breastmnist, breast_arrays, n):
    dm = setup_dm(breastmnist, train_size=n, image_size=28, resize_to=28)
    for split in ("val", "test"):
        np.testing.assert_array_equal(dm.splits[split].labels, breast_arrays[f"{split}_labels"])
        np.testing.assert_array_equal(dm.splits[split].images[:, 0].numpy(), breast_arrays[f"{split}_images"])
    assert len(dm.splits["train"].labels) == (n or BREAST_SIZES["train"])
    assert {k: len(s.labels) for k, s in dm.splits.items() if k != "train"} == {"val": 78, "test": 156}


def test_images_are_uint8_at_image_size_after_transforms(breastmnist):
    dm = setup_dm(breastmnist, train_size=20, image_size=32, batch_size=8)
    assert dm.resize_to == 34  # stored a little larger, cropped per epoch
    assert dm.splits["train"].images.shape == (20, 1, 34, 34)
    for split in ("train", "val", "test"):
        image, label = dm.dataset(split)[0]
        assert image.dtype == torch.uint8 and image.shape == (1, 32, 32)
        assert label.dtype == torch.int64 and label.ndim == 0
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (8, 1, 32, 32) and images.dtype == torch.uint8
    assert labels.shape == (8,)
    assert len(dm.train_dataloader()) == 2  # 20 images, batch 8, last partial batch dropped
    images, _ = next(iter(dm.val_dataloader()))
    assert images.shape == (78, 1, 32, 32)


def test_eval_transform_is_deterministic_and_train_transform_augments(breastmnist):
    dm = setup_dm(breastmnist, train_size=4, image_size=24)
    val = dm.dataset("val")
    assert torch.equal(val[0][0], val[0][0])
    train = dm.dataset("train")
    torch.manual_seed(0)
    views = [train[0][0] for _ in range(6)]
    assert any(not torch.equal(views[0], v) for v in views[1:])


def test_num_classes_and_task_derived(breastmnist):
    dm = NpzDataModule(str(breastmnist))
    assert dm.num_classes == 2  # before setup, from the labels alone
    assert dm.task == "binary"
    assert dm.class_names == ["malignant", "benign"]  # BreastMNIST's own names, known by the file's name
    named = NpzDataModule(str(breastmnist), class_names=["cancer", "no cancer"])
    assert named.class_names == ["cancer", "no cancer"]


def test_class_names_come_from_the_file_or_from_the_known_sets(make_npz, shared_file):
    """Runs on the shared npz sets used to predict classes '0' / '1'; their names are known."""
    kermany = NpzDataModule(str(shared_file("kermany_target_B_bacterial_vs_viral_64.npz")))
    assert kermany.class_names == ["bacterial", "viral"]
    assert NpzDataModule(str(shared_file("knee_oa_kl_64.npz"))).class_names == ["KL0", "KL1", "KL2", "KL3", "KL4"]
    carried = make_npz("own.npz", overrides={"class_names": np.array(["normal", "tumour"])})
    assert NpzDataModule(str(carried)).class_names == ["normal", "tumour"]
    assert NpzDataModule(str(make_npz("breastmnist_28.npz", train=(3, 3, 3), val=(2, 2, 2), test=(2, 2, 2)))).class_names == [
        "0", "1", "2"]  # named like BreastMNIST but with 3 classes: the known names do not fit


def test_too_large_balanced_subset_names_class_and_count(breastmnist):
    with pytest.raises(SubsetTooLargeError, match=r"class 'malignant' \(label 0\) holds 147 training images.*296"):
        setup_dm(breastmnist, train_size=296, class_names=["malignant", "benign"])
    with pytest.raises(SubsetTooLargeError, match=r"class 'malignant' \(label 0\) holds 147 training images; 148 were asked for"):
        setup_dm(breastmnist, class_counts={0: 148, 1: 10})
    with pytest.raises(SubsetTooLargeError, match=r"train_size=600 but the training split holds 546 images"):
        setup_dm(breastmnist, train_size=600, sampling="stratified")


def test_a_class_without_training_images_is_named_with_a_hint(make_npz):
    path = make_npz(train=(6, 6, 6), val=(2, 2, 2), test=(2, 2, 2))
    names = ["normal", "bacterial", "viral"]
    with pytest.raises(ValueError, match=r"train_size=2, balanced sampling, seed 0\) has no image of class "
                                         r"'viral' \(label 2, 6 in the training split\)\. HINT: use data.init_args.train_size >= 3"):
        setup_dm(path, train_size=2, class_names=names)
    with pytest.raises(ValueError, match=r"class_counts=\{0: 2, 2: 2\}, seed 0\) has no image of class 'bacterial'.*"
                                         r"HINT: give every class a count of at least 1"):
        setup_dm(path, class_counts={0: 2, 2: 2}, class_names=names)
    only_in_test = make_npz("gap.npz", train=(6, 6, 0), val=(2, 2, 2), test=(2, 2, 2))
    with pytest.raises(ValueError, match=r"'viral' \(label 2, 0 in the training split\)\. HINT: the training split itself has none"):
        setup_dm(only_in_test, num_classes=3, class_names=names)


def test_explicit_class_counts(breastmnist):
    dm = setup_dm(breastmnist, class_counts={0: 5, 1: 12}, seed=2)
    assert dm.summary()["train"] == [5, 12]


def test_setup_twice_keeps_the_subset(breastmnist):
    dm = setup_dm(breastmnist, train_size=10)
    first = dm.train_indices.copy()
    dm.setup("test")
    np.testing.assert_array_equal(dm.train_indices, first)


# ------------------------------------------------------------ written files


def test_column_labels_are_flattened(make_npz):
    path = make_npz(train=(4, 6), label_column=True)
    with np.load(path) as data:
        assert data["train_labels"].shape == (10, 1)
    dm = setup_dm(path, image_size=16)
    assert dm.splits["train"].labels.shape == (10,)
    assert dm.num_classes == 2 and dm.task == "binary"
    assert dm.summary()["train"] == [4, 6]


def test_multiclass_is_derived(make_npz):
    dm = setup_dm(make_npz(train=(4, 4, 4), val=(2, 2, 2), test=(2, 2, 2)), train_size=6, image_size=16)
    assert dm.num_classes == 3 and dm.task == "multiclass"
    assert dm.summary()["train"] == [2, 2, 2]


def test_multi_hot_labels_are_multilabel_with_random_subsets(make_npz):
    rng = np.random.default_rng(0)
    multi = {f"{s}_labels": rng.integers(0, 2, size=(n, 4)) for s, n in (("train", 12), ("val", 6), ("test", 6))}
    dm = setup_dm(make_npz(overrides=multi), train_size=5, seed=4, image_size=16)
    assert dm.num_classes == 4 and dm.task == "multilabel"
    assert dm.splits["train"].labels.shape == (5, 4)
    np.testing.assert_array_equal(dm.train_indices, np.sort(np.random.default_rng(4).permutation(12)[:5]))


def test_colour_images_become_channels_first(make_npz):
    colour = {f"{s}_images": np.zeros((n, 20, 20, 3), np.uint8) for s, n in (("train", 12), ("val", 6), ("test", 6))}
    dm = setup_dm(make_npz(overrides=colour), image_size=16)
    assert dm.dataset("val")[0][0].shape == (3, 16, 16)


def test_missing_keys_are_named(make_npz):
    path = make_npz(overrides={"val_labels": None, "test_images": None})
    with pytest.raises(KeyError, match=rf"{path} lacks the key\(s\) \['val_labels', 'test_images'\]"):
        NpzDataModule(str(path)).num_classes
    with pytest.raises(KeyError, match=r"lacks the key\(s\) \['val_labels', 'test_images'\]"):
        setup_dm(path)


def test_labels_outside_num_classes_name_split_and_labels(make_npz):
    path = make_npz(overrides={"val_labels": np.array([0, 1, 7, 1, 0, 9])})
    with pytest.raises(ValueError, match=r"val labels \[7, 9\] do not fit num_classes=2 \(valid labels are 0..1\)"):
        setup_dm(path, num_classes=2)
    path = make_npz(name="neg.npz", overrides={"test_labels": np.array([0, 1, -1, 1, 0, 1])})
    with pytest.raises(ValueError, match=r"test labels \[-1\] do not fit num_classes=2"):
        NpzDataModule(str(path)).num_classes


def test_class_names_must_match_classes(make_npz):
    with pytest.raises(ValueError, match="3 class_names given for 2 classes"):
        setup_dm(make_npz(), class_names=["a", "b", "c"])


def test_missing_file_has_a_hint(tmp_path):
    path = tmp_path / "absent.npz"
    with pytest.raises(FileNotFoundError, match=rf"npz data file not found: {path}. HINT: .*shared/data"):
        setup_dm(path)


def test_unreadable_file(tmp_path):
    path = tmp_path / "broken.npz"
    path.write_text("not an npz")
    with pytest.raises(ValueError, match=rf"{path} is not a readable .npz file"):
        setup_dm(path)


def test_images_labels_length_mismatch(make_npz):
    path = make_npz(train=(6, 6), overrides={"train_labels": np.zeros(11, dtype=np.int64)})
    with pytest.raises(ValueError, match=r"train has 12 images but 11 labels"):
        setup_dm(path)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"train_images": np.zeros((12, 28, 28), np.float32)}, r"train_images are float32; expected uint8"),
        ({"val_images": np.zeros((6, 28), np.uint8)}, r"val_images has shape \(6, 28\)"),
        ({"test_labels": np.zeros((6, 1, 1), np.int64)}, r"test_labels has shape \(6, 1, 1\)"),
    ],
)
def test_bad_arrays(make_npz, override, message):
    with pytest.raises(ValueError, match=message):
        setup_dm(make_npz(overrides=override))


def test_bad_sizes():
    with pytest.raises(ValueError, match="image_size must be at least 8 pixels, got 4"):
        NpzDataModule("x.npz", image_size=4)
    with pytest.raises(ValueError, match=r"resize_to \(20\) must be at least image_size \(32\)"):
        NpzDataModule("x.npz", image_size=32, resize_to=20)


# ------------------------------------------------------------------ sampling


LABELS = np.array([0] * 10 + [1] * 30 + [2] * 5)


def counts(indices, labels=LABELS) -> list[int]:
    return np.bincount(labels[indices], minlength=3).tolist()


def test_balanced_order_is_round_robin():
    order = subset_order(LABELS, seed=0, sampling="balanced")
    assert sorted(order.tolist()) == list(range(len(LABELS)))
    for k in range(1, 6):
        assert counts(order[: 3 * k]) == [k, k, k]
    assert LABELS[order[:3]].tolist() == [0, 1, 2]
    # once class 2 runs out the others carry on, still alternating
    assert counts(order[:25]) == [10, 10, 5]


def test_stratified_prefixes_keep_proportions():
    order = subset_order(LABELS, seed=1, sampling="stratified")
    share = np.bincount(LABELS) / len(LABELS)
    for n in range(1, len(LABELS) + 1):
        assert np.all(np.abs(np.array(counts(order[:n])) - n * share) <= 1), n


def test_sample_subset_balanced_and_sorted():
    idx = sample_subset(LABELS, 12, seed=5)
    assert counts(idx) == [4, 4, 4]
    assert np.all(np.diff(idx) > 0)
    assert counts(sample_subset(LABELS, 14, seed=5)) == [5, 5, 4]


def test_balanced_remainder_may_fall_short_in_a_later_class():
    labels = np.array([0] * 10 + [1] * 3)
    # round-robin 0,1,0,1,0,1,0 -> class 1 needs only 3 of a 7-image subset
    assert np.bincount(labels[sample_subset(labels, 7, seed=0)]).tolist() == [4, 3]
    with pytest.raises(SubsetTooLargeError, match=r"class 1 holds 3 training images; a balanced subset of 8 needs 4.*<= 7"):
        sample_subset(labels, 8, seed=0)


def test_sample_subset_per_class():
    idx = sample_subset(LABELS, seed=0, per_class={0: 2, 2: 5})
    assert counts(idx) == [2, 0, 5]
    # per-class draws are prefixes of one per-class permutation: nested too
    assert set(sample_subset(LABELS, seed=0, per_class={0: 1, 2: 3})) <= set(idx)
    with pytest.raises(SubsetTooLargeError, match=r"class 'c' \(label 2\) holds 5 training images; 6 were asked for"):
        sample_subset(LABELS, seed=0, per_class={2: 6}, class_names=["a", "b", "c"])
    with pytest.raises(ValueError, match="either a subset size or per-class counts, not both"):
        sample_subset(LABELS, 4, per_class={0: 2})


def test_sample_subset_random_and_multi_hot():
    multi = np.random.default_rng(0).integers(0, 2, size=(20, 3))
    order = subset_order(multi, seed=3, sampling="balanced")  # multi-hot: always one permutation
    np.testing.assert_array_equal(order, np.random.default_rng(3).permutation(20))
    np.testing.assert_array_equal(sample_subset(multi, 6, seed=3), np.sort(order[:6]))
    np.testing.assert_array_equal(subset_order(LABELS, seed=3, sampling="random"), np.random.default_rng(3).permutation(45))


def test_sample_subset_all_and_errors():
    np.testing.assert_array_equal(sample_subset(LABELS), np.arange(45))
    with pytest.raises(ValueError, match="train_size must be positive, got 0"):
        sample_subset(LABELS, 0)
    with pytest.raises(SubsetTooLargeError, match="train_size=46 but the training split holds 45 images"):
        sample_subset(LABELS, 46)
    with pytest.raises(ValueError, match="unknown sampling 'uniform'"):
        subset_order(LABELS, seed=0, sampling="uniform")


def test_class_counts():
    assert class_counts(np.array([0, 2, 2]), 4) == [1, 0, 2, 0]
    assert class_counts(np.array([[1, 0], [1, 1]]), 2) == [2, 1]


def test_inner_val_holds_out_part_of_the_training_subset_as_the_val_split(breastmnist):
    plain = setup_dm(breastmnist, train_size=50, seed=4)
    dm = setup_dm(breastmnist, train_size=50, seed=4, inner_val=0.3)
    assert dm.summary()["train"] == [17, 17] and dm.summary()["val"] == [8, 8]  # 30% of each class of 25, rounded
    assert len(np.intersect1d(dm.train_indices, dm.inner_val_indices)) == 0
    assert sorted(np.concatenate([dm.train_indices, dm.inner_val_indices])) == sorted(plain.train_indices)
    assert dm.summary()["test"] == plain.summary()["test"]  # the test split is untouched
    with np.load(breastmnist) as data:  # the val images are those training images
        held = torch.as_tensor(data["train_images"][dm.inner_val_indices]).float().mean()
    assert dm.splits["val"].images.shape[0] == 16
    assert abs(float(dm.splits["val"].images.float().mean()) - float(held)) < 2.0  # resized, same pictures
    with pytest.raises(ValueError, match=r"inner_val=0.5 needs at least 2 training images of each class.*\['malignant'\]"):
        setup_dm(breastmnist, class_counts={0: 1, 1: 10}, inner_val=0.5)
    with pytest.raises(ValueError, match=r"inner_val is the fraction .* in \(0, 1\); got 1.0"):
        NpzDataModule(str(breastmnist), inner_val=1.0)


def test_inner_folds_validate_on_every_training_image_once(breastmnist):
    plain = setup_dm(breastmnist, train_size=50, seed=4)
    held = [setup_dm(breastmnist, train_size=50, seed=4, inner_folds=3, inner_fold=f) for f in range(3)]
    assert [dm.summary()["val"] for dm in held] == [[9, 8], [8, 9], [8, 8]]  # each class dealt round the folds
    for dm in held:
        assert len(np.intersect1d(dm.train_indices, dm.inner_val_indices)) == 0
        assert sorted(np.concatenate([dm.train_indices, dm.inner_val_indices])) == sorted(plain.train_indices)
        assert dm.summary()["test"] == plain.summary()["test"]
    assert sorted(np.concatenate([dm.inner_val_indices for dm in held])) == sorted(plain.train_indices)  # a partition
    with pytest.raises(ValueError, match=r"inner_folds=5 needs at least 5 training images of each class.*\['malignant'\]"
                                         r".*or fewer inner_folds"):
        setup_dm(breastmnist, class_counts={0: 4, 1: 10}, inner_folds=5)
    with pytest.raises(ValueError, match="inner_val .* or inner_folds .*, not both"):
        NpzDataModule(str(breastmnist), inner_val=0.3, inner_folds=3)
    with pytest.raises(ValueError, match="got inner_folds=3, inner_fold=3"):
        NpzDataModule(str(breastmnist), inner_folds=3, inner_fold=3)
