"""ShapesWorld in motion, the video judge, VideoShapesEval and video files.

Measured on this code (3000 clips of 8 frames and 1000 of 16, 32 px, all five tasks): 100 % of
ground-truth clips judged correct and 100 % of wrong captions (direction, colour, shape, moving vs
still) judged incorrect; the asserts leave a 1 % margin.
"""
from __future__ import annotations

import json
from collections import defaultdict

import imageio.v3 as iio
import pytest
import torch

from diffalign.media import MediaError, load_video, make_frame_strip, save_frame_strip, save_video
from diffalign.shapes import motion
from diffalign.shapes import video_judge as VJ
from diffalign.shapes import world
from diffalign.shapes.world import GrammarError

BACKGROUND = torch.tensor(world.BACKGROUND, dtype=torch.float32)[:, None, None] / 255


@pytest.fixture(scope="module")
def ground_truth():
    samples = motion.generate_video_dataset(1000, seed=5)
    videos = torch.stack([s.video for s in samples])
    return samples, videos, VJ.detect_videos(videos)


# ------------------------------------------------------------------------------------------- world
def test_clips_are_deterministic_videos_in_the_package_convention():
    a = motion.generate_video_dataset(6, seed=3, frames=10)
    b = [motion.make_video_sample(i, seed=3, frames=10) for i in reversed(range(6))][::-1]
    videos = torch.stack([s.video for s in a])
    assert videos.shape == (6, 10, 3, 32, 32) and videos.dtype == torch.float32
    assert 0 <= float(videos.min()) and float(videos.max()) <= 1
    assert torch.equal(videos, torch.stack([s.video for s in b]))  # item i is the same alone, in any order
    assert [s.caption for s in a] == [s.caption for s in b]
    assert not torch.equal(videos, torch.stack([s.video for s in motion.generate_video_dataset(6, seed=4, frames=10)]))
    # every frame is the image world's render of the scene at that time
    scene = a[0].scene
    assert torch.equal(a[0].video[3], world.render_tensor(scene.frame(3, 10)))
    for bad in (7, 17, 8.5, True):
        with pytest.raises(Exception, match="frames must be an integer in"):
            motion.make_video_sample(0, frames=bad)


def test_objects_move_by_their_travel_in_their_direction_and_stay_apart():
    for index in range(60):
        sample = motion.make_video_sample(index, seed=8, frames=12)
        objs = sample.scene.objects
        for obj, row in zip(objs, sample.metadata["objects"]):
            assert (obj.shape, obj.motion) == (row["class"], row["motion"]) and obj.color == row.get("color", obj.color)
            start, end = obj.centre_at(0.0), obj.centre_at(1.0)
            dx, dy = motion.MOTION_VECTORS[obj.motion]
            assert end == pytest.approx((start[0] + dx * obj.travel, start[1] + dy * obj.travel))
            if obj.motion == "still":
                assert obj.travel == 0
            else:
                assert motion.TRAVEL_RANGE[0] <= obj.travel <= motion.TRAVEL_RANGE[1]
            for progress in (0.0, 1.0):  # inside the border at both ends, hence all along the straight path
                x0, y0, x1, y1 = obj.at(progress).box
                assert min(x0, y0) >= world._BORDER - 1e-9 and max(x1, y1) <= 1 - world._BORDER + 1e-9
        if len(objs) == 2:
            assert min(world._box_gap(objs[0].at(t / 11), objs[1].at(t / 11)) for t in range(12)) >= world._GAP
        if len(objs) == 1 and objs[0].motion != "still":
            # the rendered colour mass moves by travel × side pixels, measured on the pixels alone
            video = sample.video
            mask = (video - BACKGROUND).abs().sum(1)  # T×H×W, proportional to the antialiased coverage
            xs = (mask * (torch.arange(32) + 0.5)).sum((1, 2)) / mask.sum((1, 2))
            ys = (mask * (torch.arange(32)[:, None] + 0.5)).sum((1, 2)) / mask.sum((1, 2))
            dx, dy = motion.MOTION_VECTORS[objs[0].motion]
            assert float(xs[-1] - xs[0]) == pytest.approx(dx * objs[0].travel * 32, abs=0.3)
            assert float(ys[-1] - ys[0]) == pytest.approx(dy * objs[0].travel * 32, abs=0.3)


def test_captions_round_trip_and_bad_captions_are_refused():
    for task in motion.MOTION_TASKS:
        for seed in range(20):
            metadata = motion.sample_motion_metadata(seed, task)
            assert metadata["tag"] == task
            assert motion.parse_motion_caption(metadata["prompt"]) == metadata
            assert motion.parse_motion_caption("  " + metadata["prompt"].upper() + ". ") == metadata
    assert motion.parse_motion_caption("a red circle moving to the right")["objects"] == [{"class": "circle", "color": "red", "motion": "right"}]
    two = motion.parse_motion_caption("a blue square moving up and a green triangle moving left")
    assert two["prompt"] == "a blue square moving up and a green triangle moving to the left" and two["tag"] == "two_moving"
    assert motion.parse_motion_caption("a still yellow triangle") == {
        "tag": "still", "objects": [{"class": "triangle", "color": "yellow", "motion": "still"}], "prompt": "a still yellow triangle"}
    assert motion.parse_motion_caption("an orange circle moving down and a still red square")["tag"] == "moving_and_still"
    for bad in ("a red circle", "a circle moving sideways", "a red hexagon moving up", "an red circle moving up",
                "a still red circle moving up", "a red circle moving up and a red square moving down",
                "a circle moving up and a circle moving down", "a circle moving up and a square moving up and a triangle moving up",
                "", "a photo of a red circle"):
        with pytest.raises(GrammarError, match="motion grammar|different shapes|outside"):
            motion.parse_motion_caption(bad)
    with pytest.raises(GrammarError, match="unknown motion 'sideways'"):
        motion.make_motion_metadata("moving", [{"class": "circle", "motion": "sideways"}])


# ------------------------------------------------------------------------------------------- judge
def test_judge_is_right_on_ground_truth_and_rejects_wrong_captions(ground_truth):
    samples, videos, detections = ground_truth
    correct, per_task, rejected = [], defaultdict(list), defaultdict(list)
    for index, (sample, dets) in enumerate(zip(samples, detections)):
        tracks = VJ.track(dets, 32)
        verdict = VJ.video_verdict(dets, sample.metadata, 32, tracks)
        correct.append(verdict.correct)
        per_task[sample.metadata["tag"]].append(verdict.correct)
        assert verdict.correct == (verdict.score == 1.0)
        for kind, wrong in motion.wrong_captions(sample.scene, index).items():
            wrong_verdict = VJ.video_verdict(dets, wrong, 32, tracks)
            rejected[kind].append(not wrong_verdict.correct)
            assert wrong_verdict.score < 1
    assert sum(correct) / len(correct) >= 0.99
    assert set(per_task) == set(motion.MOTION_TASKS) and all(sum(v) / len(v) >= 0.98 for v in per_task.values())
    assert set(rejected) == {"direction", "color", "shape", "motion"}
    for kind, values in rejected.items():
        assert sum(values) / len(values) >= 0.99, kind
    assert sum(len(v) for v in rejected.values()) > 3000


def test_partial_credit_names_what_failed(ground_truth):
    samples, videos, _ = ground_truth
    index = next(i for i, s in enumerate(samples) if s.metadata["tag"] == "colored_motion")
    sample, video = samples[index], videos[index]
    row = sample.metadata["objects"][0]
    opposite = {"left": "right", "right": "left", "up": "down", "down": "up"}[row["motion"]]
    wrong = motion.make_motion_metadata("colored_motion", [{**row, "motion": opposite}])
    verdict = VJ.judge_video(video, wrong)
    # present and identity hold, the motion (backwards: no credit) fails: 2 of 3 constraints
    assert not verdict.correct and verdict.score == pytest.approx(2 / 3)
    assert f"is {row['motion']}, not {opposite}" in verdict.reason
    # played backwards, the same clip shows the opposite motion
    assert VJ.judge_video(video.flip(0), wrong).correct
    # the object changes shape half-way: one track, identity and presence each half kept
    other = next(s for s in world.SHAPES if s != row["class"])
    morphed = motion.MotionScene([motion.MovingObject(other, o.color, o.start, o.size, o.motion, o.travel) for o in sample.scene.objects], sample.metadata)
    video_morph = torch.cat([video[:4], motion.render_video(morphed)[4:]])
    verdict = VJ.judge_video(video_morph, sample.caption)
    credits = {c["constraint"].split()[-1]: c["credit"] for c in verdict.details["credits"]}
    assert not verdict.correct and credits["present"] == pytest.approx(0.5) and credits["identity"] == pytest.approx(0.5)
    assert credits[row["motion"]] == 1.0 and len(verdict.details["tracks"]) == 1
    # an object that vanishes for two frames is not present in every frame
    blanked = video.clone()
    blanked[2:4] = BACKGROUND
    assert not VJ.judge_video(blanked, sample.caption).correct
    # a still caption on a moving clip gets the credit of how little it moved (none here)
    still = motion.make_motion_metadata("still", [{"class": row["class"], "color": row["color"], "motion": "still"}])
    assert VJ.judge_video(video, still).details["credits"][2]["credit"] == 0.0


def test_judge_survives_noise_and_off_distribution_videos(ground_truth):
    generator = torch.Generator().manual_seed(0)
    samples, clips, _ = ground_truth
    noisy = (clips[:100] + 0.05 * torch.randn(clips[:100].shape, generator=generator)).clamp(0, 1)
    assert sum(v.correct for v in VJ.judge_videos(noisy, [s.caption for s in samples[:100]])) >= 97  # mild noise: still judged
    videos = {
        "black": torch.zeros(2, 8, 3, 32, 32),
        "white": torch.ones(2, 8, 3, 32, 32),
        "uniform noise": torch.rand(2, 8, 3, 32, 32, generator=generator),
        "nan": torch.full((2, 8, 3, 32, 32), float("nan")),
        "other size": torch.rand(2, 9, 3, 48, 40, generator=generator),
    }
    clip = motion.make_video_sample(0, seed=1).video
    videos["noisy clip"] = (clip + 0.6 * torch.randn(clip.shape, generator=generator)).clamp(0, 1)[None].repeat(2, 1, 1, 1, 1)
    for name, batch in videos.items():
        verdicts = VJ.judge_videos(batch, ["a red circle moving up and a still blue square"] * 2)
        assert all(not v.correct and 0 <= v.score < 1 for v in verdicts), name
    with pytest.raises(MediaError, match="B×T×C×H×W"):
        VJ.judge_videos(torch.zeros(2, 3, 32), ["a still red circle"])
    with pytest.raises(MediaError, match="at least 2 frames"):
        VJ.judge_videos(torch.zeros(1, 1, 3, 32, 32), ["a still red circle"])
    with pytest.raises(GrammarError):
        VJ.judge_videos(torch.zeros(1, 8, 3, 32, 32), ["a photo of a red circle"])
    with pytest.raises(ValueError, match="2 videos but 1 prompts"):
        VJ.judge_videos(torch.zeros(2, 8, 3, 32, 32), ["a still red circle"])


def test_shapes_video_scorer_scores_videos_and_files(tmp_path):
    from diffalign import scorers
    from diffalign.scorers.batch import score_files
    from diffalign.shapes.video_dataset import write_video_dataset

    samples = motion.generate_video_dataset(4, seed=2)
    videos = torch.stack([s.video for s in samples])
    scorer = scorers.load("shapes_video")
    assert scorer.modality == "video"
    assert scorer(videos, [s.caption for s in samples]).tolist() == [1.0] * 4
    wrong = [motion.wrong_captions(s.scene, 0)["shape"]["prompt"] for s in samples]
    assert (scorer(videos, wrong) < 1).all()
    assert scorers.load("shapes_video", mode="binary")(videos, wrong).tolist() == [0.0] * 4
    with pytest.raises(ValueError, match="scores videos"):
        scorer(videos[:, 0], [s.caption for s in samples])
    # batch scoring of files: the dataset's MP4s, read back, judge as the tensors do
    captions = write_video_dataset(tmp_path / "clips", n=5, seed=2)
    result = score_files([tmp_path / "clips" / "videos"], ["shapes_video"], prompts=captions, out=tmp_path / "scores.jsonl", progress=False)
    assert result.summary["ok"] == 5 and result.summary["scorers"]["shapes_video"]["mean"] == 1.0


# ------------------------------------------------------------------------------------------- files
@pytest.mark.parametrize("suffix", [".mp4", ".gif"])
def test_video_files_read_back_with_every_frame_and_size(tmp_path, suffix):
    samples = motion.generate_video_dataset(5, seed=4, frames=9, tasks=["still", "moving"])
    videos = torch.stack([s.video for s in samples])
    one = save_video(videos[0], tmp_path / f"one{suffix}", fps=4)
    frames = iio.imread(one, index=None)
    assert frames.shape[:3] == (9, 32, 32)  # still clips too: identical frames are kept
    assert float((load_video(one) - videos[0]).abs().mean()) < 0.01
    grid = save_video(videos, tmp_path / f"grid{suffix}", nrow=3, scale=2)
    # 2 rows × 3 columns of 32 px tiles with 2 px padding, doubled
    assert iio.imread(grid, index=None).shape[:3] == (9, 2 * (2 * 34 + 2), 2 * (3 * 34 + 2))
    # what the judge sees in the file is what was rendered
    assert all(v.correct for v in VJ.judge_videos(load_video(one)[None], [samples[0].caption]))


def test_frame_strip_has_one_row_per_video():
    videos = torch.rand(3, 8, 3, 16, 16)
    strip = make_frame_strip(videos, padding=2)
    assert strip.shape == (3, 3 * 18 + 2, 8 * 18 + 2)
    assert torch.equal(strip[:, 2 + 18 : 2 + 18 + 16, 2 + 5 * 18 : 2 + 5 * 18 + 16], videos[1, 5])


def test_frame_strip_file(tmp_path):
    path = save_frame_strip(torch.rand(2, 8, 3, 16, 16), tmp_path / "strip.png", scale=2)
    assert iio.imread(path).shape == (2 * (2 * 18 + 2), 2 * (8 * 18 + 2), 3)


# -------------------------------------------------------------------------------------------- eval
def test_video_shapes_eval_on_ground_truth_and_noise(tmp_path):
    from diffalign.eval.video_shapes_eval import GroundTruthVideoSampler, run_video_shapes_eval, suite_path, build_prompt_suite

    shipped = [json.loads(line) for line in suite_path().read_text().splitlines()]
    assert shipped == build_prompt_suite()  # the versioned suite is what the builder makes
    assert {row["tag"] for row in shipped} == set(motion.MOTION_TASKS)
    summary = run_video_shapes_eval(GroundTruthVideoSampler(), tmp_path / "gt", videos_per_prompt=1, max_prompts_per_task=2,
                                    frames=8, progress=False)
    assert summary["overall"] == 1.0 and set(summary["tasks"]) == set(motion.MOTION_TASKS)
    mp4s = sorted((tmp_path / "gt" / "images").rglob("*.mp4"))
    assert len(mp4s) == 2 * len(motion.MOTION_TASKS)
    assert iio.imread(mp4s[0], index=None).shape[:3] == (8, 32, 32)
    assert iio.imread(tmp_path / "gt" / "grid.mp4", index=None).shape[0] == 8
    assert (tmp_path / "gt" / "frames.png").exists()
    from diffalign.eval.compare import before_after_grid

    grid = before_after_grid(tmp_path / "gt", tmp_path / "gt", tmp_path / "before_after.png", tile=32)
    from diffalign.eval.compare import CAPTION_BAND

    caption_band = CAPTION_BAND  # prompt and verdict under every tile
    assert iio.imread(grid).shape[0] == 18 + len(motion.MOTION_TASKS) * (32 + caption_band + 2)  # a row per task, MP4s' first frames

    class NoiseSampler:
        def sample(self, prompts, generator=None, num_frames=8, **_):
            return torch.stack([torch.rand(num_frames, 3, 32, 32, generator=g) for g in generator])

    noise = run_video_shapes_eval(NoiseSampler(), tmp_path / "noise", videos_per_prompt=1, max_prompts_per_task=2,
                                  progress=False, save_videos=False)
    assert noise["overall"] == 0.0 and noise["overall_score"] < 0.1

    class ImageSampler:
        def sample(self, prompts, **_):
            return torch.rand(len(prompts), 3, 32, 32)

    with pytest.raises(MediaError, match="expected video media"):
        run_video_shapes_eval(ImageSampler(), tmp_path / "images", videos_per_prompt=1, max_prompts_per_task=1, progress=False)


def test_cli_eval_shapes_video_and_render_videos(tmp_path, capsys):
    from diffalign.cli import main

    assert main(["eval", "shapes-video", "--model", "oracle", "--out", str(tmp_path / "eval"), "--images-per-prompt", "1",
                 "--max-prompts-per-task", "1", "--no-progress"]) == 0
    assert json.loads((tmp_path / "eval" / "summary.json").read_text())["overall"] == 1.0
    assert main(["render-videos", "--out", str(tmp_path / "clips"), "--n", "3", "--frames", "12", "--format", "gif"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "clips" / "captions.jsonl").read_text().splitlines()]
    assert [r["caption"] for r in rows] == [motion.make_video_sample(i, 0, 12).caption for i in range(3)]
    for row in rows:
        assert iio.imread(tmp_path / "clips" / row["file"], index=None).shape[:3] == (12, 32, 32)
        assert motion.parse_motion_caption(row["caption"]) == row["metadata"]
    capsys.readouterr()
    for argv, message in [
        (["--n", "3"], "captions.jsonl exists"),
        (["--n", "0"], "--n must be an integer >= 1, got 0"),
        (["--frames", "20"], "--frames must be an integer >= 8 and <= 16, got 20"),
        (["--tasks", "moving,flying"], "unknown motion task 'flying'"),
    ]:
        out = tmp_path / "clips" if "exists" in message else tmp_path / "bad"
        assert main(["render-videos", "--out", str(out), *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("diffalign render-videos: ") and message in err and "\n" not in err
    assert not (tmp_path / "bad").exists()
