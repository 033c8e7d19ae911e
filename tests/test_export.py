"""deeplab-lightning export: ONNX (checked under onnxruntime), TorchScript and torch.export programs with
dynamic batch, height and width, taking uint8 RGB."""
import numpy as np
import onnxruntime as ort
import pytest
import torch

from deeplab_lightning import load
from deeplab_lightning.commands.cli import main as cli_main
from deeplab_lightning.data import ToyVOCDataModule
from deeplab_lightning.commands.export import FORMATS, export_network, main as export_main, read_metadata
from deeplab_lightning.models import create_model

SIZES = [(1, 97, 75), (3, 64, 130)]  # batch, height, width: none of them the traced example's


def images(batch, height, width):
    return torch.randint(0, 256, (batch, 3, height, width), dtype=torch.uint8)


def test_onnx_export_of_a_checkpoint_matches_pytorch_under_onnxruntime(tmp_path, toy_dir, toy_settings,
                                                                       write_config, capsys):
    cli_main(["fit", "--config", str(write_config(tmp_path / "run", toy_dir, toy_settings))])
    ckpt = tmp_path / "run" / "ckpt" / "best.ckpt"
    assert export_main(["--ckpt_path", str(ckpt), "--format", "onnx"]) == 0
    onnx_path = ckpt.with_suffix(".onnx")
    assert f"Wrote {onnx_path}" in capsys.readouterr().out
    net = load(str(ckpt)).net
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    for size in SIZES:
        x = images(*size)
        with torch.no_grad():
            expected = net(x).numpy()
        (logits,) = session.run(None, {"images": x.numpy()})
        assert logits.shape == expected.shape == (size[0], net.num_classes, size[1], size[2])
        np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=0)
    inputs = {i.name: i.shape for i in session.get_inputs()}
    assert inputs == {"images": ["batch", 3, "height", "width"]}
    assert session.get_outputs()[0].shape == ["batch", net.num_classes, "height", "width"]
    metadata = read_metadata(onnx_path)  # what a deployer needs to name and colour the argmax
    assert metadata["class_names"] == load(str(ckpt)).class_names and metadata["num_classes"] == net.num_classes
    assert metadata["palette"][1] == list(ToyVOCDataModule.palette[1]) and len(metadata["palette"]) == net.num_classes
    with pytest.raises(FileExistsError, match="--overwrite true"):
        export_main(["--ckpt_path", str(ckpt), "--format", "onnx"])
    before = onnx_path.stat().st_mtime_ns
    assert export_main(["--ckpt_path", str(ckpt), "--format", "onnx", "--overwrite"]) == 0  # alone: true
    assert onnx_path.stat().st_mtime_ns != before


@pytest.mark.parametrize("fmt", ["torchscript", "exported_program"])
def test_torchscript_and_exported_programs_take_any_size(tmp_path, fmt):
    torch.manual_seed(0)
    net = create_model("deeplabv3plus_resnet18", 3, aspp_channels=8, decoder_channels=8).eval()
    path = export_network(net, tmp_path / f"net{FORMATS[fmt]}", fmt, metadata={"class_names": ["a", "b", "c"]})
    assert read_metadata(path) == {"class_names": ["a", "b", "c"]}
    loaded = torch.jit.load(str(path)) if fmt == "torchscript" else torch.export.load(str(path)).module()
    for size in SIZES:
        x = images(*size)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), net(x), atol=1e-4, rtol=0)


def test_a_timm_encoder_with_same_padding_exports_as_a_program_that_loads(tmp_path):
    # timm/resnet10t's average-pool shortcut pads TF-"same" with math.ceil on the traced size: torch.export
    # could trace it but not save it (SerializeError, and a file that did not load)
    torch.manual_seed(0)
    net = create_model("deeplabv3plus", 3, backbone="timm/resnet10t", aspp_channels=8, decoder_channels=8).eval()
    path = export_network(net, tmp_path / "net.pt2", "exported_program")
    loaded = torch.export.load(str(path)).module()
    x = images(*SIZES[0])
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x), atol=1e-4, rtol=0)
    assert [p.name for p in tmp_path.iterdir()] == ["net.pt2"]


def test_export_refuses_a_wrong_suffix_its_own_checkpoint_and_leaves_no_file_when_it_fails(tmp_path, capsys):
    class Fails(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("cannot trace this")

    with pytest.raises(ValueError, match=r"a torchscript file is named \*.pt .*name it y.pt"):
        export_network(torch.nn.Identity(), tmp_path / "y.onnx", "torchscript")
    with pytest.raises(RuntimeError, match="cannot trace this"):
        export_network(Fails(), tmp_path / "z.pt", "torchscript")
    assert list(tmp_path.iterdir()) == []  # neither the file nor its temporary
    ckpt = tmp_path / "best.ckpt"
    ckpt.write_bytes(b"weights")
    for args, message in ((["--output", str(ckpt)], "is the checkpoint being exported"),
                          (["--overwrite", "on"], "expected true or false, got 'on'")):
        with pytest.raises(SystemExit):
            export_main(["--ckpt_path", str(ckpt), *args])
        assert message in capsys.readouterr().err
    assert ckpt.read_bytes() == b"weights"
