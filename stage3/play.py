"""Play a stage 3 model live: a local web page streams the world and takes the player's keys.

    python play.py --model_dir ../outputs/stage3/model --data_root ../footage --index_file ../footage/index.json

then open the address it prints (http://127.0.0.1:8000/). The world starts from --initial_video, or sample
--sample_index of the dataset; the page can start from any dataset clip or an uploaded video, change the prompt,
pause, restart and record. A recording downloads as a zip whose replay.sh generates it again with inference.py.
Sampling options are inference.py's, checked against the model before it loads; the page plays at the model's
frame rate.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterator
from itertools import islice
from pathlib import Path

import torch

from stage3 import inference
from stage3.cogvideox.pipeline_cogvideox import StreamChunk, SwinDPMPipeline
from thematrix.cli import run
from thematrix.config import ConfigError, first_given
from thematrix.data.initial_clip import InitialClip
from thematrix.play.server import add_server_arguments, check_server_arguments, play
from thematrix.precompile import precompiled_dir

# Groups of the stream --compile makes before the page is served: the first group's decode takes the priming
# frames with it, the second decodes alone, so by then every compiled graph (encoder, blocks, decoder) exists.
WARM_UP_GROUPS = 2


class StreamWorldModel:
    """Everything play needs from the pipeline and inference.py, in one place: the initial clips as inference.py
    reads them, the stream as inference.py runs it, and inference.py's arguments that replay a recorded segment.
    The options and the first clip are checked against the model directory (inference.check_stream_options, which
    completes them from its record, else the sampler's ``defaults``) before it loads."""

    def __init__(
        self,
        args: argparse.Namespace,
        pipeline_class: type[SwinDPMPipeline],
        inference_module: str,
        defaults: dict = inference.SWIN_DPM_DEFAULTS,
    ):
        if args.context_parallel is not None:
            raise ConfigError(
                "--context_parallel: play serves one page from one process; stream with inference.py under torchrun, "
                "or decode on a second GPU with --decode_device cuda:1"
            )
        self.args = args
        self.inference_module = inference_module
        self.start = inference.check_stream_options(args, pipeline_class, defaults)
        self.vocabulary = self.start.vocabulary
        self.fps, self.num_groups, self.group_size = args.fps, args.num_groups, args.group_size
        self.initial_frames = self.start.initial_frames
        self.default_prompt = first_given(args.prompt, self.start.defaults.prompt)
        if self.default_prompt is None:
            self.default_prompt = self._first_caption()
        self.first_clip = None  # the world waits for a clip from the page
        if args.initial_video is not None:
            self.first_clip = self.clip_from_file(args.initial_video)
        elif args.index_file is not None:
            self.first_clip = self.clip_from_sample(args.sample_index)
        self.pipeline = inference.load_pipeline(args, self.start, pipeline_class)
        if args.compile:
            self.warm_up()

    def warm_up(self) -> None:
        """A short stream before the page is served (with --compile), so that the first player's stream starts on
        compiled graphs: the compilation, or on a later launch the loading of the saved graphs, happens here."""
        folder = precompiled_dir()
        later = (
            f"a later launch loads the graphs saved in {folder}" if folder else "less once inductor's cache holds it"
        )
        print(f"compiling the stream (--compile): minutes the first time; {later}", flush=True)
        start = time.perf_counter()
        frames, height, width = self.initial_frames, self.start.defaults.height, self.start.defaults.width
        clip = self.first_clip or InitialClip(torch.zeros(frames, 3, height, width), name="a blank clip")
        still = [self.vocabulary.tokens[0]] * self.group_size
        for _ in islice(self.stream(clip, self.default_prompt, lambda group: still), WARM_UP_GROUPS):
            pass
        print(f"the stream is compiled, in {time.perf_counter() - start:.0f} s", flush=True)

    def _first_caption(self) -> str:
        """The prompt of a model that records none: the dataset's first caption."""
        if not self.start.samples:
            raise ConfigError(
                f"--prompt: the model at {self.start.model_dir} records no prompt and there is no dataset to take a "
                "caption from; pass --prompt"
            )
        return self.start.samples[0].caption

    def sample_names(self) -> list[str]:
        return [f"{sample.relative_path}: {sample.caption}" for sample in self.start.samples]

    def clip_from_sample(self, index: int) -> InitialClip:
        return self.start.from_sample(index, self.fps)

    def clip_from_file(self, path: Path) -> InitialClip:
        return self.start.from_file(path, self.fps)

    def stream(self, clip: InitialClip, prompt: str, controls: Callable[[int], list[str]]) -> Iterator[StreamChunk]:
        args = self.args
        return self.pipeline.stream(
            prompt,
            clip.video,
            controls,
            num_groups=self.num_groups,
            group_size=self.group_size,
            num_inference_steps=self.num_inference_steps,
            guidance_scale=args.guidance_scale,
            control_guidance_scale=args.control_guidance_scale,
            generator=torch.Generator(device=self.pipeline.device).manual_seed(args.seed),
            initial_control=clip.initial_control,
            overlap_decode=args.overlap_decode,
        )

    @property
    def num_inference_steps(self) -> int:
        return self.args.num_inference_steps

    def replay_arguments(self, initial_video: str, prompt: str, controls: str, groups: int, output: str) -> list[str]:
        args = self.args
        return [
            "--model_dir",
            str(Path(args.model_dir).resolve()),
            "--initial_video",
            initial_video,
            "--prompt",
            prompt,
            "--controls",
            controls,
            "--groups",
            str(groups),
            "--seed",
            str(args.seed),
            "--num_groups",
            str(self.num_groups),
            "--group_size",
            str(self.group_size),
            "--num_inference_steps",
            str(self.num_inference_steps),
            "--guidance_scale",
            str(args.guidance_scale),
            "--control_guidance_scale",
            str(args.control_guidance_scale),
            "--fps",
            str(self.fps),
            "--output",
            output,
        ]


def parse_args(
    argv=None,
    description: str = __doc__,
    defaults: dict = inference.SWIN_DPM_DEFAULTS,
    pipeline_class: type[SwinDPMPipeline] = SwinDPMPipeline,
) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    inference.add_stream_arguments(parser, defaults)
    add_server_arguments(parser)
    args = parser.parse_args(argv)
    if args.initial_video is not None and args.index_file is not None:
        parser.error("give --initial_video or --data_root/--index_file, not both")
    if (args.data_root is None) != (args.index_file is None):
        parser.error("give --data_root and --index_file together (or neither, and upload a video on the page)")
    check_server_arguments(parser, args)
    inference.check_step_options(parser, args, pipeline_class)
    return args


def main(
    argv=None,
    pipeline_class: type[SwinDPMPipeline] = SwinDPMPipeline,
    description: str = __doc__,
    defaults: dict = inference.SWIN_DPM_DEFAULTS,
    inference_module: str = "stage3.inference",
) -> None:
    args = parse_args(argv, description, defaults, pipeline_class)
    model = StreamWorldModel(args, pipeline_class, inference_module, defaults)
    play(model, args, model.first_clip)


if __name__ == "__main__":
    run(main)
