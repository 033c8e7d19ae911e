import lightning as L
import pytest
import torch

from deeplab_lightning.data import TOY_CLASSES, ToyVOCDataModule
from deeplab_lightning.models import convert_sync_batchnorm
from deeplab_lightning.module import SegmentationModule
from deeplab_lightning.training import parameter_groups


def tiny_module(**kwargs):
    kwargs.setdefault("model_kwargs", {"aspp_channels": 16, "decoder_channels": 16, "low_level_channels": 8})
    return SegmentationModule("deeplabv3plus_resnet18", num_classes=6, **kwargs)


def test_parameter_groups_split_backbone_head_and_decay():
    module = tiny_module(lr=0.01, head_lr_mult=10.0, weight_decay=1e-4)
    groups = {g["name"]: g for g in module.configure_optimizers().param_groups}
    assert set(groups) == {"backbone", "backbone_no_decay", "head", "head_no_decay"}
    assert groups["backbone"]["lr"] == 0.01 and groups["head"]["lr"] == pytest.approx(0.1)
    assert groups["head_no_decay"]["weight_decay"] == 0.0 and groups["head"]["weight_decay"] == 1e-4
    backbone_ids = {id(p) for p in module.net.backbone.parameters()}
    assert {id(p) for p in groups["backbone"]["params"] + groups["backbone_no_decay"]["params"]} == backbone_ids
    n_params = sum(len(g["params"]) for g in groups.values())
    assert n_params == len(list(module.parameters()))


def test_biases_train_at_twice_the_lr_as_in_the_papers_caffe_and_tf_code():
    # Caffe (V1/V2): lr_mult 2 on every bias, 20 for fc8's (10 x 2); no weight decay on biases.
    module = SegmentationModule("deeplabv1_vgg16_largefov", num_classes=3, lr=0.001, head_lr_mult=10.0,
                                bias_lr_mult=2.0, weight_decay=5e-4, model_kwargs={"channels": 8})
    groups = {g["name"]: g for g in module.configure_optimizers().param_groups}
    assert set(groups) == {"backbone", "backbone_bias", "head", "head_bias"}  # VGG: no BatchNorm
    assert groups["backbone_bias"]["lr"] == pytest.approx(0.002) and groups["head_bias"]["lr"] == pytest.approx(0.02)
    assert groups["backbone_bias"]["weight_decay"] == groups["head_bias"]["weight_decay"] == 0.0
    biases = {id(m.bias) for m in module.net.modules() if isinstance(m, torch.nn.Conv2d) and m.bias is not None}
    assert {id(p) for g in ("backbone_bias", "head_bias") for p in groups[g]["params"]} == biases
    assert sum(len(g["params"]) for g in groups.values()) == len(list(module.parameters()))


@pytest.mark.parametrize("arch", ["deeplabv1_vgg16_largefov", "deeplabv2_vgg16"])
def test_vgg_heads_train_fc6_fc7_at_the_base_lr_and_only_the_classifier_faster(arch):
    # V1 section 4.1: lr 0.001, 0.01 for the final classifier layer (fc8); fc6/fc7 come from VGG's fc layers.
    module = SegmentationModule(arch, num_classes=3, lr=0.001, head_lr_mult=10.0, model_kwargs={"channels": 8})
    fast = {id(p) for g in module.configure_optimizers().param_groups if g["lr"] > 0.001 for p in g["params"]}
    heads = [m for m in module.net.modules() if type(m).__name__ == "FCHead"]
    assert heads and fast == {id(p) for head in heads for p in head[-1].parameters()}


def test_depthwise_weights_are_not_decayed():
    # TF reference: regularize_depthwise=False (Xception-65, MobileNet); pointwise weights are decayed.
    module = tiny_module(weight_decay=1e-4, model_kwargs={"aspp_channels": 16, "decoder_channels": 16,
                                                          "low_level_channels": 8, "separable": True})
    decay = {id(p) for g in module.configure_optimizers().param_groups if g["weight_decay"] > 0 for p in g["params"]}
    convs = [m for m in module.net.modules() if isinstance(m, torch.nn.Conv2d)]
    depthwise = [m.weight for m in convs if m.groups > 1 and m.groups == m.in_channels]
    assert depthwise and not decay & {id(w) for w in depthwise}
    assert {id(m.weight) for m in convs if m.groups == 1} <= decay


def test_freeze_bn_keeps_the_backbone_batchnorms_out_of_a_fit(toy_dir, toy_settings, tmp_path):
    with pytest.raises(ValueError, match="model.freeze_bn .* loads no weights"):
        tiny_module(freeze_bn=True)
    torch.save({"state_dict": tiny_module().state_dict()}, tmp_path / "start.ckpt")
    module = tiny_module(freeze_bn=True, bn_momentum=0.5, init_checkpoint=str(tmp_path / "start.ckpt"))
    frozen = [m for m in module.net.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    head = [m for m in module.net.decoder.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    before = [m.running_mean.clone() for m in frozen + head]
    dm = ToyVOCDataModule(str(toy_dir), **toy_settings, crop_size=48, batch_size=2, num_workers=0)
    L.Trainer(max_steps=2, limit_val_batches=0, logger=False, enable_progress_bar=False, enable_checkpointing=False,
              enable_model_summary=False).fit(module, datamodule=dm)
    assert all(torch.equal(m.running_mean, b) for m, b in zip(frozen, before))  # V2: use_global_stats
    assert not any(torch.equal(m.running_mean, b) for m, b in zip(head, before[len(frozen):]))  # new layers train
    trained = {id(p) for g in module.configure_optimizers().param_groups for p in g["params"]}
    assert not trained & {id(p) for m in frozen for p in m.parameters()}
    assert {id(p) for m in head for p in m.parameters()} <= trained
    module.train()
    assert not any(m.training for m in frozen)
    # Several GPUs: the SyncBatchNorms that replace them stay frozen (same parameters, eval mode kept).
    synced = [m for m in convert_sync_batchnorm(module.net).backbone.modules() if isinstance(m, torch.nn.SyncBatchNorm)]
    assert len(synced) == len(frozen) and not any(m.training or m.weight.requires_grad for m in synced)


def test_freeze_bn_statistics_keeps_every_running_statistic_and_trains_the_affine_parameters(toy_dir, toy_settings,
                                                                                           tmp_path):
    """TF's fine_tune_batch_norm=False (V3's OS 8 fine-tuning on trainval): every BatchNorm, heads included,
    normalises with its stored statistics and never updates them, while gamma and beta still train."""
    torch.save({"state_dict": tiny_module().state_dict()}, tmp_path / "start.ckpt")
    module = tiny_module(freeze_bn="statistics", bn_momentum=0.5, lr=0.05,
                         init_checkpoint=str(tmp_path / "start.ckpt"))
    norms = [m for m in module.net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    stats = [m.running_mean.clone() for m in norms]
    affine = [m.weight.detach().clone() for m in norms]
    dm = ToyVOCDataModule(str(toy_dir), **toy_settings, crop_size=48, batch_size=2, num_workers=0)
    L.Trainer(max_steps=2, limit_val_batches=0, logger=False, enable_progress_bar=False, enable_checkpointing=False,
              enable_model_summary=False).fit(module, datamodule=dm)
    assert all(torch.equal(m.running_mean, b) for m, b in zip(norms, stats))
    assert sum(not torch.equal(m.weight, a) for m, a in zip(norms, affine)) > len(norms) // 2
    module.train()
    assert not any(m.training for m in norms)
    with pytest.raises(ValueError, match="freeze_bn must be false, true or statistics"):
        tiny_module(freeze_bn="all", init_checkpoint=str(tmp_path / "start.ckpt"))


def test_module_without_backbone_gets_one_lr():
    groups = parameter_groups(torch.nn.Conv2d(3, 2, 1), lr=0.1, weight_decay=0.0, head_lr_mult=10.0)
    assert {g["lr"] for g in groups} == {1.0}


def test_training_and_validation_steps_on_tiny_inputs():
    module = tiny_module()
    batch = {"image": torch.randn(2, 3, 64, 64), "mask": torch.randint(0, 6, (2, 64, 64))}
    batch["mask"][:, :8] = 255
    loss = module.training_step(batch, 0)
    assert loss.ndim == 0 and torch.isfinite(loss) and loss.requires_grad
    loss.backward()
    all_ignored = {"image": batch["image"], "mask": torch.full((2, 64, 64), 255)}
    assert module.training_step(all_ignored, 0).item() == 0.0  # not NaN
    module.eval()
    with torch.no_grad():
        module.validation_step({**batch, "size": [(64, 64), (64, 64)]}, 0)
    assert module.evaluator.final["val"].confmat.sum().item() == (batch["mask"] != 255).sum().item()


def _validate(module, datamodule):
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    return trainer.validate(module, datamodule=datamodule, verbose=False)[0]


def test_mIoU_does_not_depend_on_validation_batch_size(toy_dir, toy_settings):
    torch.manual_seed(0)
    module = tiny_module(class_names=TOY_CLASSES)
    # A few training steps so that the predictions are not constant.
    opt = torch.optim.SGD(module.parameters(), lr=0.05)
    dm = ToyVOCDataModule(str(toy_dir), **toy_settings, crop_size=64, batch_size=4, num_workers=0)
    for batch in dm.train_dataloader():
        opt.zero_grad()
        module.training_step(batch, 0).backward()
        opt.step()
    results = {}
    for bs in (1, 4):
        dm = ToyVOCDataModule(str(toy_dir), **toy_settings, val_batch_size=bs, num_workers=0)
        results[bs] = _validate(module, dm)
    assert results[1]["val/mIoU"] == pytest.approx(results[4]["val/mIoU"], abs=1e-6)
    assert results[1]["val/pixel_acc"] == pytest.approx(results[4]["val/pixel_acc"], abs=1e-6)
    assert 0.0 < results[1]["val/pixel_acc"] < 1.0
    assert results[1]["val/iou/disk"] == pytest.approx(results[4]["val/iou/disk"], abs=1e-6, nan_ok=True)


@pytest.mark.parametrize("scales", [(1.0,), (0.5, 1.0, 1.25)])
def test_fixed_shape_evaluation_feeds_one_shape_per_scale_and_any_batch_size_gives_one_metric(
        toy_dir, toy_settings, scales):
    # TF protocol: every validation image (64-80 px here) is padded to one canvas (eval_size, 81 x 81 here as 513
    # for VOC), so the network sees one input shape per scale, whatever the batch size.
    from deeplab_lightning.callbacks import MultiScaleInference

    torch.manual_seed(0)
    module = tiny_module(class_names=TOY_CLASSES)
    shapes, results = set(), {}
    module.net.register_forward_pre_hook(lambda m, args: shapes.add(tuple(args[0].shape[-2:])))
    for bs in (1, 3):
        dm = ToyVOCDataModule(str(toy_dir), **toy_settings, val_batch_size=bs, eval_size=81, num_workers=0)
        callbacks = [MultiScaleInference(scales=scales, flip=False, stages=["validate"])]
        trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks)
        results[bs] = trainer.validate(module, datamodule=dm, verbose=False)[0]
    assert shapes == {((81 - 1) * s + 1,) * 2 for s in scales}  # TF's (size - 1) * scale + 1
    for key in ("val/mIoU", "val/pixel_acc", "val/loss"):
        assert results[1][key] == pytest.approx(results[3][key], abs=1e-6)


def test_class_weights_and_hardest_pixels_give_the_defined_losses():
    torch.manual_seed(0)
    logits, mask = torch.randn(2, 6, 8, 8), torch.randint(0, 6, (2, 8, 8))
    mask[0, :2] = 255  # ignored
    per_pixel = torch.nn.functional.cross_entropy(logits, mask, ignore_index=255, reduction="none")
    counted = mask != 255
    assert torch.allclose(tiny_module().loss(logits, mask), per_pixel[counted].mean())
    weights = [0.0, 2.0, 1.0, 1.0, 1.0, 1.0]  # background ignored, disks count twice
    w = torch.tensor(weights)[mask.clamp(max=5)] * counted
    expected = (w * per_pixel).sum() / w.sum()
    assert torch.allclose(tiny_module(class_weights=weights).loss(logits, mask), expected)
    hardest = per_pixel.flatten().topk(int(0.25 * per_pixel.numel())).values  # TF's top_k_percent_pixels
    assert torch.allclose(tiny_module(top_k_percent_pixels=0.25).loss(logits, mask), hardest.mean())
    with pytest.raises(ValueError, match="class_weights needs 6 finite, non-negative weights"):
        tiny_module(class_weights=[1.0, 2.0])


def test_compile_and_fused_optimizer_options():
    plain = tiny_module()
    graphs = []

    def recording_backend(graph, example_inputs):  # a torch.compile backend that records what it compiles
        graphs.append(graph)
        return graph.forward

    module = tiny_module(compile={"backend": recording_backend})
    assert list(module.state_dict()) == list(plain.state_dict())  # compiled in place: checkpoints keep their keys
    batch = {"image": torch.randn(2, 3, 64, 64), "mask": torch.randint(0, 6, (2, 64, 64))}
    optimizer = module.configure_optimizers()
    assert optimizer.defaults["fused"] is True  # the default on the CPU as on the GPU
    module.training_step(batch, 0).backward()
    assert graphs  # the network ran compiled
    optimizer.step()
    assert tiny_module(fused_optimizer=False).configure_optimizers().defaults["fused"] is None  # PyTorch's own


def test_compiled_network_trains_and_validates_images_of_any_size(toy_dir, toy_settings):
    """``model.compile`` through AOTAutograd (``aot_eager``: the tracing, functionalisation and backward graph
    of the inductor path without its C++ code generation, which costs minutes on a cold cache; inductor itself
    is measured by ``benchmarks/bench.py``): training crops, then whole validation images of several sizes
    (64-80 px, one by one), give the eager network's outputs."""
    torch.manual_seed(0)
    module = tiny_module(compile={"backend": "aot_eager"}, channels_last=True)
    dm = ToyVOCDataModule(str(toy_dir), **toy_settings, crop_size=48, batch_size=2, num_workers=0)
    trainer = L.Trainer(max_steps=2, val_check_interval=2, check_val_every_n_epoch=None, num_sanity_val_steps=0,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(module, datamodule=dm)
    assert trainer.global_step == 2 and module.evaluation_results("val").step == 2
    module.eval()
    with torch.no_grad():
        for h, w in ((70, 75), (64, 80)):
            x = torch.randn(1, 3, h, w).contiguous(memory_format=torch.channels_last)
            compiled, eager = module.net(x), module.net.forward(x)  # forward() bypasses the compiled call
            assert compiled.shape == (1, 6, h, w)
            torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4)


def test_a_network_that_declares_no_groups_keeps_its_backbone_at_the_base_lr_also_under_the_crf():
    from deeplab_lightning.evaluation.crf_rnn import TrainableDenseCRF, WithCRF

    class Custom(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone, self.classifier = torch.nn.Conv2d(3, 4, 3), torch.nn.Conv2d(4, 2, 1)

    net = Custom()
    for model in (net, WithCRF(net, TrainableDenseCRF(2))):
        groups = {g["name"]: g for g in parameter_groups(model, lr=0.1, weight_decay=1e-4, head_lr_mult=10.0)}
        assert groups["backbone"]["params"] == [net.backbone.weight] and groups["backbone"]["lr"] == 0.1
        assert groups["head"]["params"] == [net.classifier.weight] and groups["head"]["lr"] == pytest.approx(1.0)


def test_evaluation_results_name_an_unknown_stage():
    module = tiny_module()
    assert module.evaluation_results("val") is None and module.evaluation_results("test", unrefined=True) is None
    with pytest.raises(ValueError, match="unrefined=True"):
        module.evaluation_results("val/unrefined")


def test_a_checkpoint_that_does_not_fit_the_model_is_told_in_one_sentence_with_its_cause():
    module = tiny_module()
    wider = tiny_module(model_kwargs={"aspp_channels": 16, "decoder_channels": 16})
    with pytest.raises(ValueError) as other_settings:
        module.load_state_dict(wider.state_dict())
    message = str(other_settings.value)
    assert "tensor(s) of another shape (e.g. net." in message and "other model settings" in message
    assert len(message) < 600  # not one line per tensor
    with pytest.raises(ValueError, match="lack the 'net.' prefix.*--model.init_checkpoint"):
        module.load_state_dict(module.net.state_dict())  # the bare network's weights
