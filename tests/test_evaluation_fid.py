"""evaluation/fid.py against pytorch-fid's own statistics and Fréchet distance, with a small
random-weight feature extractor standing in for InceptionV3 (a 2048-d sqrtm costs ~10 s)."""
from __future__ import annotations

from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image
from pytorch_fid import inception as pf_inception
from pytorch_fid.fid_score import calculate_activation_statistics, calculate_frechet_distance

from hw2_utils import CLIError, run_cli
from evaluation.fid import WEIGHTS_NAME, fid_from_dirs, load_inception, main

DIMS = 64


class TinyExtractor(nn.Module):
    """pytorch-fid's InceptionV3 interface: a list holding (N, DIMS, 1, 1) features."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 32, 3, 2), nn.Tanh(), nn.Conv2d(32, DIMS, 3, 2), nn.AdaptiveAvgPool2d(1))

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
    return write_images(root / "a", 120, seed=0), write_images(root / "b", 100, seed=1, brightness=0.7)


def test_matches_pytorch_fid_pipeline(folders):
    a, b = folders
    extractor = TinyExtractor().eval()
    reference = [calculate_activation_statistics(sorted(d.glob("*.png")), extractor, batch_size=32, dims=DIMS,
                                                 num_workers=0) for d in (a, b)]
    expected = calculate_frechet_distance(*reference[0], *reference[1])
    assert expected > 1.0  # the two sets really differ, so agreement is not trivial
    assert fid_from_dirs(a, b, extractor=extractor, device="cpu", batch_size=32) == pytest.approx(expected, abs=1e-6)
    assert fid_from_dirs(a, a, extractor=extractor, device="cpu") == pytest.approx(0.0, abs=1e-6)


def test_saved_statistics_give_the_same_fid(folders, tmp_path):
    a, b = folders
    extractor = TinyExtractor().eval()
    direct = fid_from_dirs(a, b, extractor=extractor, device="cpu", save_stats=tmp_path / "b.npz")
    with np.load(tmp_path / "b.npz") as f:
        assert f["mu"].shape == (DIMS,) and f["sigma"].shape == (DIMS, DIMS)
    assert fid_from_dirs(a, tmp_path / "b.npz", extractor=extractor, device="cpu") == pytest.approx(direct, abs=1e-9)


def test_local_weights_file_is_loaded_into_pytorch_fid_inception(tmp_path, capsys):
    # A same-shaped random state dict stands in for the 91 MB download.
    with mock.patch.object(pf_inception, "load_state_dict_from_url", lambda *a, **k: None), \
            mock.patch.object(nn.Module, "load_state_dict", lambda *a, **k: None):
        skeleton = pf_inception.fid_inception_v3()
    state = {k: v.half() for k, v in skeleton.state_dict().items()}
    torch.save(state, tmp_path / "weights.pth")
    model = load_inception(tmp_path / "weights.pth")
    assert "not pytorch-fid's pt_inception-2015-12-05-6726825d.pth" in capsys.readouterr().out
    # blocks[3] = Mixed_7a, Mixed_7b, Mixed_7c, pool: the last block, whose pool gives the 2048-d features
    assert len(model.blocks) == 4 and isinstance(model.blocks[3][3], nn.AdaptiveAvgPool2d)
    assert torch.equal(model.blocks[3][1].branch1x1.conv.weight, state["Mixed_7b.branch1x1.conv.weight"].float())
    assert torch.equal(model.blocks[0][0].conv.weight, state["Conv2d_1a_3x3.conv.weight"].float())


def test_cli_rejects_bad_weights(folders, tmp_path, capsys):
    a, _ = folders
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: main([str(a), str(a), "--weights", str(tmp_path / "bad.pth"), "--device", "cpu"]))
    assert exit_info.value.code == 2
    assert "is not the FID Inception weights" in capsys.readouterr().err


def test_offline_without_weights_says_how_to_get_them():
    if (Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_NAME).exists():
        pytest.skip("the FID weights are in the torch hub cache, so nothing needs downloading")
    with pytest.raises(CLIError, match="cannot download the FID Inception weights .* pass --weights PATH"):
        load_inception()


def test_statistics_need_two_images_and_one_size(tmp_path):
    write_images(tmp_path / "one", 1, seed=0)
    with pytest.raises(CLIError, match="a covariance needs at least 2"):
        fid_from_dirs(tmp_path / "one", tmp_path / "one", extractor=TinyExtractor(), device="cpu")
    write_images(tmp_path / "mixed", 3, seed=0)
    Image.new("RGB", (30, 30)).save(tmp_path / "mixed" / "big.png")
    with pytest.raises(CLIError, match="images of different sizes"):
        fid_from_dirs(tmp_path / "mixed", tmp_path / "mixed", extractor=TinyExtractor(), device="cpu")
