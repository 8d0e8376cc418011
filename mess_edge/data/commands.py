"""``mess-edge data ...``: make and inspect datasets. Thin: each command calls one library function."""

import click


@click.group("data")
def data():
    """Make or check a segmentation dataset (PASCAL VOC layout)."""


@data.command("digitscenes")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Folder to create (must be new, empty, or a DigitScenes folder with the same options).")
@click.option("--size", default=128, show_default=True, help="Image side in pixels (32..1024).")
@click.option("--n-train", default=2000, show_default=True, help="Images in the train split.")
@click.option("--n-cal", default=500, show_default=True, help="Images in the calibration split.")
@click.option("--n-test", default=500, show_default=True, help="Images in the test split.")
@click.option("--seed", default=0, show_default=True, help="Seed; the same seed gives identical files.")
def digitscenes(out_dir, size, n_train, n_cal, n_test, seed):
    """Generate DigitScenes: scenes of real handwritten digits (scikit-learn's), 11 classes, VOC layout."""
    from mess_edge.artifacts import Output, check_writable
    from mess_edge.data.digitscenes import format_summary, generate_digitscenes

    check_writable(Output("--out", out_dir, folder=True, replaces=True))
    summary = generate_digitscenes(out_dir, size=size, n_train=n_train, n_cal=n_cal, n_test=n_test, seed=seed,
                                   show_progress=True)
    click.echo(format_summary(summary))


@data.command("check")
@click.option("--data", "root", required=True, type=click.Path(), help="VOC-layout dataset folder.")
@click.option("--split", "splits", multiple=True, help="Split(s) to check (default: every split listed).")
def check(root, splits):
    """Load every image and label of a VOC-layout folder and report what is wrong, if anything."""
    from mess_edge.data.voc import check_folder

    for line in check_folder(root, splits):
        click.echo(line)


@data.command("video")
@click.option("--data", "root", required=True, type=click.Path(), help="VOC-layout dataset folder.")
@click.option("--split", default="test", show_default=True)
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False), help="Video file (.mp4).")
@click.option("--fps", default=10.0, show_default=True)
@click.option("--repeat", default=1, show_default=True, help="Play the split this many times.")
def video(root, split, out_path, fps, repeat):
    """Render a split's images into a video, e.g. as a stand-in camera for `mess-edge run --source`."""
    from mess_edge.artifacts import check_outputs
    from mess_edge.data.digitscenes import write_split_video

    check_outputs([("--out", out_path)], [("--data", root)])
    frames = write_split_video(root, split, out_path, fps=fps, repeat=repeat)
    click.echo("wrote {} frames at {:g} fps to {}".format(frames, fps, out_path))
