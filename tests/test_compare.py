"""The before/after grid captions every tile with its prompt and the judge's verdict."""
import numpy as np
import torch
from PIL import Image

from diffalign.eval.compare import CAPTION_BAND, before_after_grid
from diffalign.eval.shapes_eval import GroundTruthSampler, run_shapes_eval


class NoiseSampler:
    def sample(self, prompts, generator=None, **_):
        return torch.stack([torch.rand(3, 32, 32, generator=g) for g in generator])


def _verdict_colours(region: np.ndarray) -> tuple[int, int]:
    """Pixels of the grid's pass green and fail red in a caption band."""
    r, g, b = (region[..., i].astype(int) for i in range(3))
    return int(((g > 90) & (r < 60) & (b < 60)).sum()), int(((r > 150) & (g < 60) & (b < 60)).sum())


def test_grid_captions_each_tile_with_its_prompt_and_verdict(tmp_path):
    run = dict(images_per_prompt=1, max_prompts_per_task=2, progress=False)
    run_shapes_eval(NoiseSampler(), tmp_path / "noise", **run)
    run_shapes_eval(GroundTruthSampler(), tmp_path / "truth", **run)
    tile = 48
    grid = np.asarray(Image.open(before_after_grid(tmp_path / "noise", tmp_path / "truth", tmp_path / "grid.png", tile=tile)))
    plain = np.asarray(Image.open(before_after_grid(tmp_path / "noise", tmp_path / "truth", tmp_path / "plain.png", tile=tile,
                                                    captions=False)))
    band = CAPTION_BAND
    assert grid.shape[0] == 18 + 6 * (tile + band + 2) and plain.shape[0] == 18 + 6 * (tile + 2)
    half = 92 + (grid.shape[1] - 92) // 2
    bands = np.concatenate([grid[18 + r * (tile + band + 2) + tile: 18 + (r + 1) * (tile + band + 2)] for r in range(6)])
    noise_green, noise_red = _verdict_colours(bands[:, :half])
    truth_green, truth_red = _verdict_colours(bands[:, half:])
    assert noise_red > 0 and noise_green == 0  # noise fails every prompt: red verdicts only
    assert truth_green > 0 and truth_red == 0  # the rendered scenes pass every prompt
    assert (bands[:, :half] < 60).all(axis=-1).sum() > 0  # black prompt text under the tiles
