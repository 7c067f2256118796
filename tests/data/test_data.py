"""Tests for dalle2_md.data: layout detection, label maps, decoding of every image mode, jet
inversion, splits, the decode cache, display helpers, `inspect-data`, and every bad-input case."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from dalle2_md.cli.main import cli
from dalle2_md.data.colormap import scalar_to_rgb
from dalle2_md.data.scanning import DataWarning, scan_data_root
from dalle2_md.data.labels import LabelMap
from dalle2_md.data.dataset import MicroDopplerDataset
from dalle2_md.data.splits import load_split, make_split, save_split
from dalle2_md.data.display import colourise, save_grid
from dalle2_md.utils import DataError

RNG = np.random.default_rng(0)


def jet_png(path: Path, size=(16, 16), values=None) -> np.ndarray:
    """Write a jet-coloured image of random scalars on the 8-bit grid; return the scalars."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if values is None:
        values = RNG.integers(0, 256, size=size[::-1]) / 255.0
    Image.fromarray(scalar_to_rgb(values)).save(path)
    return values


def make_hier(root: Path, names, per_user=4, size=(16, 16)) -> Path:
    for name in names:
        for k in range(per_user):
            jet_png(root / name / f"img_{k:03d}.png", size)
    return root


def make_flat(root: Path, ids, per_user=3) -> Path:
    entries = []
    for uid in ids:
        for k in range(per_user):
            name = f"user{uid}_{k:03d}.png"
            jet_png(root / "images" / name)
            entries.append({"filename": name, "user_id": uid})
    (root / "metadata.json").write_text(json.dumps(entries))
    return root


def quiet_dataset(*args, **kwargs) -> MicroDopplerDataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return MicroDopplerDataset(*args, **kwargs)


# ---------------------------------------------------------------- layout detection + label map


@pytest.mark.parametrize(
    "names, expected_order",
    [
        (["user_0", "user_2", "user_10"], ["user_0", "user_2", "user_10"]),  # numeric, not lexical
        (["user_01", "user_02", "user_03"], ["user_01", "user_02", "user_03"]),
        (["ID_1", "ID_2", "ID_12", "subject3"], ["ID_1", "ID_2", "subject3", "ID_12"]),
    ],
)
def test_hierarchical_detection_sorts_users_by_number(tmp_path, names, expected_order):
    make_hier(tmp_path, names, per_user=2)
    ds = MicroDopplerDataset(tmp_path, image_size=16)
    assert ds.layout == "hierarchical"
    assert list(ds.label_map.names) == expected_order
    assert len(ds) == 2 * len(names)
    # each file carries the index of the folder it sits in
    for path, uid in zip(ds.files, ds.user_indices.tolist()):
        assert path.parent.name == expected_order[uid]


def test_flat_detection_labels_and_file_stem(tmp_path):
    make_flat(tmp_path, ids=[0, 1, 2], per_user=3)
    ds = MicroDopplerDataset(tmp_path, image_size=16)
    assert ds.layout == "flat"
    assert list(ds.label_map.names) == ["0", "1", "2"]
    assert ds.counts() == [3, 3, 3]
    assert ds.label_map.file_stem(2) == "user_2"
    for path, uid in zip(ds.files, ds.user_indices.tolist()):
        assert path.name.startswith(f"user{uid}_")


def test_label_map_id_1_to_31_and_round_trip(tmp_path):
    lm = LabelMap.from_folder_names([f"ID_{i}" for i in range(31, 0, -1)])
    assert len(lm) == 31
    assert [lm.index_of(f"ID_{i}") for i in range(1, 32)] == list(range(31))
    assert lm.index_of("ID_5") == lm.index_of("5") == lm.index_of(5) == lm.index_of(np.int64(5)) == 4
    assert lm.index_of("id_5") == 4
    assert lm.name_of(30) == "ID_31"
    assert lm.file_stem(4) == "ID_5"
    d = lm.to_dict()
    assert json.loads(json.dumps(d)) == d  # plain JSON types
    assert LabelMap.from_dict(d) == lm
    lm.save(tmp_path / "labels.json")
    assert LabelMap.load(tmp_path / "labels.json") == lm
    with pytest.raises(DataError, match=r"unknown user 'ID_40'.*ID_1, ID_2"):
        lm.index_of("ID_40")
    with pytest.raises(DataError, match="unknown user 0"):
        lm.index_of(0)  # numbers are the user's own number, not the class index
    with pytest.raises(DataError, match="out of range"):
        lm.name_of(31)


def test_label_map_file_with_an_unknown_key_is_refused_naming_it(tmp_path):
    path = tmp_path / "label_map.json"
    path.write_text(json.dumps({**LabelMap.from_ids([3, 1]).to_dict(), "colours": ["red"]}))
    with pytest.raises(DataError, match=r"label_map.json: label map has unknown keys \['colours'\]"):
        LabelMap.load(path)
    with pytest.raises(DataError, match="label map is malformed: expected a JSON object, got list"):
        LabelMap.from_dict(["ID_1"])


def test_label_map_non_contiguous_ids(tmp_path):
    make_hier(tmp_path, ["ID_7", "ID_1"], per_user=2)
    ds = MicroDopplerDataset(tmp_path, image_size=16)
    assert list(ds.label_map.names) == ["ID_1", "ID_7"]
    assert ds.label_map.index_of(7) == 1 and ds.label_map.index_of("ID_1") == 0
    assert sorted(set(ds.user_indices.tolist())) == [0, 1]


def test_flat_label_map_accepts_user_stem():
    lm = LabelMap.from_ids([4, 0, 9])
    assert lm.names == ("0", "4", "9")
    assert lm.index_of("user_9") == lm.index_of(9) == lm.index_of("9") == 2
    assert lm.file_stem(1) == "user_4"


def test_given_label_map_is_used_and_unknown_users_rejected(tmp_path):
    model_map = LabelMap.from_folder_names(["ID_1", "ID_2", "ID_3"])
    make_hier(tmp_path / "sub", ["ID_3"], per_user=2)
    ds = MicroDopplerDataset(tmp_path / "sub", image_size=16, label_map=model_map.to_dict())
    assert ds.label_map == model_map and ds.user_indices.tolist() == [2, 2]
    make_hier(tmp_path / "other", ["ID_3", "ID_9"], per_user=2)
    with pytest.raises(DataError, match=r"not trained on: ID_9.*knows ID_1, ID_2, ID_3"):
        MicroDopplerDataset(tmp_path / "other", image_size=16, label_map=model_map)


# ---------------------------------------------------------------- decoding


def test_every_mode_and_size_is_accepted_and_resized(tmp_path):
    rgb = scalar_to_rgb(RNG.random((20, 28)))
    user = tmp_path / "user_0"
    user.mkdir()
    Image.fromarray(rgb).save(user / "rgb.png")
    Image.fromarray(rgb).convert("RGBA").save(user / "rgba.png")
    Image.fromarray(rgb).convert("P").save(user / "p.png")
    Image.fromarray(RNG.integers(0, 256, (40, 12), dtype=np.uint8)).save(user / "l.png")
    Image.fromarray(RNG.integers(0, 65536, (9, 33)).astype(np.uint16)).save(user / "i16.png")
    Image.fromarray(RNG.integers(0, 2, (16, 16), dtype=np.uint8) * 255).convert("1").save(user / "one.bmp")
    Image.fromarray(rgb).save(user / "jpeg.JPG", quality=95)
    Image.fromarray(rgb).save(user / "tiff.tif")
    modes = {p.name: Image.open(p).mode for p in user.iterdir()}
    assert {"RGB", "RGBA", "P", "L", "1"} <= set(modes.values())
    assert modes["i16.png"].startswith("I")
    for colormap, channels in (("jet", 1), ("none", 3)):
        ds = quiet_dataset(tmp_path, image_size=24, colormap=colormap)
        assert ds.channels == channels and len(ds) == len(modes) and not ds.skipped
        x, uid = ds[0]
        assert x.shape == (channels, 24, 24) and x.dtype == torch.float32 and uid == 0
        images, ids = ds.tensors()
        assert images.shape == (len(modes), channels, 24, 24)
        assert images.min() >= -1.0 and images.max() <= 1.0
        assert images.std() > 0.1  # real content, not a constant
        assert ids.tolist() == [0] * len(modes)


def test_jet_inversion_round_trip_within_two_levels(tmp_path):
    values = jet_png(tmp_path / "user_0" / "a.png", size=(24, 24))
    ds = MicroDopplerDataset(tmp_path, image_size=24)
    assert ds.channels == 1
    got = (ds[0][0][0].numpy() + 1.0) / 2.0
    # jet repeats pure blue over 5 table entries (inverted to the middle one: error 2/255);
    # float16 storage adds at most half a float16 step (2**-12 on this scale)
    assert np.abs(got - values).max() <= 2 / 255 + 2**-12
    assert ds.residual is not None and ds.residual < 1.0


def test_greyscale_under_jet_is_used_as_the_scalar(tmp_path):
    grey = RNG.integers(0, 256, (16, 16), dtype=np.uint8)
    (tmp_path / "user_0").mkdir()
    Image.fromarray(grey).save(tmp_path / "user_0" / "g.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "user_0" / "g16.png")
    ds = MicroDopplerDataset(tmp_path, image_size=16)
    for i in range(2):
        got = (ds[i][0][0].numpy() + 1.0) / 2.0
        assert np.abs(got - grey / 255.0).max() <= 2**-11
    assert ds.residual is None  # nothing was inverted


def test_downsizing_keeps_mean_energy(tmp_path):
    values = jet_png(tmp_path / "user_0" / "a.png", size=(64, 64))
    ds = MicroDopplerDataset(tmp_path, image_size=16)
    got = (ds[0][0][0].numpy() + 1.0) / 2.0
    block_means = values.reshape(16, 4, 16, 4).mean(axis=(1, 3))  # area filter == 4x4 means
    assert np.abs(got - block_means).max() < 3 / 255


def test_non_jet_images_warn_once_per_dataset(tmp_path):
    for k in range(5):
        path = tmp_path / "user_0" / f"{k}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(RNG.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        MicroDopplerDataset(tmp_path, image_size=16)
    msgs = [str(w.message) for w in caught if "colormap" in str(w.message)]
    assert len(msgs) == 1 and "--colormap none" in msgs[0] and str(tmp_path) in msgs[0]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = MicroDopplerDataset(tmp_path, image_size=16, colormap="none")
    assert not caught and ds.channels == 3


# ---------------------------------------------------------------- splits


def test_split_reproducible_disjoint_saved_and_reused(tmp_path, caplog):
    data = make_hier(tmp_path / "data", ["user_0", "user_1", "user_2"], per_user=10)
    make_hier(data, ["user_3"], per_user=3)
    make_hier(data, ["user_4"], per_user=2)
    index = scan_data_root(data)
    with caplog.at_level(logging.WARNING, logger="dalle2_md.data.splits"):
        a = make_split(index, seed=0)
    assert "user_4 (2)" in caplog.text  # small users go to train, and that is logged
    assert a == make_split(index, seed=0)
    assert a != make_split(index, seed=1)
    sets = [set(a[k]) for k in ("train", "val", "test")]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    assert sets[0] | sets[1] | sets[2] == {index.relpath(f) for f in index.files}
    for user in ("user_0", "user_1", "user_2", "user_3"):
        for k in ("val", "test"):
            assert any(p.startswith(user + "/") for p in a[k]), (user, k)
    assert sum(p.startswith("user_0/") for p in a["train"]) == 8
    assert not any(p.startswith("user_4/") for p in a["val"] + a["test"])

    split_file = tmp_path / "split.json"
    parts = {k: quiet_dataset(data, image_size=16, split=k, split_file=split_file) for k in ("train", "val", "test")}
    saved = load_split(split_file)
    assert saved["seed"] == 0 and saved["fractions"] == [0.8, 0.1, 0.1] and saved["train"] == a["train"]
    assert sum(len(d) for d in parts.values()) == len(index.files)
    assert {parts["test"].index.relpath(f) for f in parts["test"].files} == set(a["test"])

    # an existing file wins over the seed: move one image from train to test and it follows
    moved = saved["train"].pop(0)
    saved["test"].append(moved)
    save_split(saved, split_file)
    test = quiet_dataset(data, image_size=16, split="test", split_file=split_file, split_seed=5)
    assert moved in {test.index.relpath(f) for f in test.files}


def test_split_file_missing_new_images_is_an_error(tmp_path):
    data = make_hier(tmp_path / "data", ["user_0", "user_1"], per_user=4)
    split_file = tmp_path / "split.json"
    quiet_dataset(data, image_size=16, split="train", split_file=split_file)
    jet_png(data / "user_1" / "new.png")
    with pytest.raises(DataError, match=r"does not cover 1 image.*user_1/new.png.*delete the split file"):
        MicroDopplerDataset(data, image_size=16, split="train", split_file=split_file)


def test_split_bad_fractions_and_name(tmp_path):
    data = make_hier(tmp_path, ["user_0"], per_user=4)
    with pytest.raises(DataError, match="sum to 1"):
        make_split(scan_data_root(data), fractions=(0.5, 0.1, 0.1))
    with pytest.raises(DataError, match="'training' is not one of"):
        MicroDopplerDataset(data, split="training")


# ---------------------------------------------------------------- cache + display


def test_decode_cache_is_reused_and_invalidated(tmp_path):
    data = make_hier(tmp_path / "data", ["user_0"], per_user=3)
    cache = tmp_path / "cache"
    first = MicroDopplerDataset(data, image_size=16, cache_dir=cache)
    files = list(cache.glob("*.pt"))
    assert len(files) == 1
    again = MicroDopplerDataset(data, image_size=16, cache_dir=cache)
    assert torch.equal(first.images, again.images)
    MicroDopplerDataset(data, image_size=8, cache_dir=cache)  # other size -> other entry
    assert len(list(cache.glob("*.pt"))) == 2
    jet_png(data / "user_0" / "img_000.png")  # new content, new mtime -> new entry, new pixels
    changed = MicroDopplerDataset(data, image_size=16, cache_dir=cache)
    assert len(list(cache.glob("*.pt"))) == 3
    assert not torch.equal(changed.images[0], first.images[0])


def test_display_rgb_and_grid(tmp_path):
    values = RNG.integers(0, 256, (2, 8, 8)) / 255.0
    x = torch.from_numpy(values).float()[:, None]
    rgb = colourise(x, "jet")
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 8, 8, 3)
    assert np.array_equal(rgb, scalar_to_rgb(values))
    colour = torch.rand(3, 3, 8, 8)
    passed = colourise(colour, "none")
    assert np.abs(passed.astype(float) / 255 - colour.permute(0, 2, 3, 1).numpy()).max() <= 0.5 / 255 + 1e-6
    grey = colourise(x[0], "none")
    assert grey.shape == (1, 8, 8, 3) and np.array_equal(grey[..., 0], grey[..., 2])
    path = save_grid(torch.cat([x, x, x]), tmp_path / "g" / "grid.png", nrow=4, colormap="jet")
    im = Image.open(path)
    assert im.size == (4 * 10 + 2, 2 * 10 + 2) and im.mode == "RGB"
    assert np.array_equal(np.asarray(im)[2:10, 2:10], rgb[0])


# ---------------------------------------------------------------- bad input


def test_bad_images_are_skipped_with_one_warning(tmp_path):
    make_hier(tmp_path, ["user_0", "user_1"], per_user=3)
    big = Image.fromarray(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    big.save(tmp_path / "user_0" / "truncated.png")
    raw = (tmp_path / "user_0" / "truncated.png").read_bytes()
    (tmp_path / "user_0" / "truncated.png").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "user_1" / "empty.png").write_bytes(b"")
    (tmp_path / "user_1" / "notes.png").write_text("not an image at all")
    (tmp_path / "user_1" / "readme.txt").write_text("ignored: not an image extension")
    with pytest.warns(DataWarning) as record:
        ds = MicroDopplerDataset(tmp_path, image_size=16, colormap="none")
    msgs = [str(w.message) for w in record if str(w.message).startswith("skipped")]
    assert len(msgs) == 1
    msg = msgs[0]
    assert msg.startswith("skipped 3 of 9 images")
    for name, why in (("truncated.png", "truncated"), ("empty.png", "zero-byte"), ("notes.png", "not an image")):
        assert name in msg and why in msg
    assert len(ds) == 6 and len(ds.skipped) == 3
    assert all(f.suffix == ".png" and f.name.startswith("img_") for f in ds.files)


def test_user_whose_images_are_all_bad_is_an_error(tmp_path):
    make_hier(tmp_path, ["user_0"], per_user=2)
    (tmp_path / "user_1").mkdir()
    (tmp_path / "user_1" / "a.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"every image of user\(s\) user_1"):
        MicroDopplerDataset(tmp_path)


@pytest.mark.parametrize(
    "case, pattern",
    [
        ("missing_root", r"does not exist"),
        ("root_is_file", r"is a file, not a folder"),
        ("empty_root", r"no user folders and no metadata.json"),
        ("loose_images", r"found 2 images directly in it"),
        ("empty_user", r"user folder .*user_1 holds no images.*add its images or remove the folder"),
        ("duplicate_number", r"user_1, user_01 carry the same user number|user_01, user_1 carry the same user number"),
        ("num_users", r"num_users=5 but .* holds 2 users.*--num-users 2"),
        ("meta_not_json", r"metadata.json is not valid JSON"),
        ("meta_not_list", r"must hold a JSON list"),
        ("meta_empty", r"lists no images"),
        ("meta_no_field", r"entry 1 .* lacks 'filename' or 'user_id'"),
        ("meta_outside_dotdot", r"entry 1: filename '\.\./x\.png' points outside the data root"),
        ("meta_outside_abs", r"entry 1: filename '/.*x\.png' points outside the data root"),
        ("meta_missing_file", r"lists 1 file\(s\) that do not exist .*gone\.png"),
        ("meta_uid_str", r"entry 1 \(user1_000\.png\): 'user_id' must be a JSON integer.*'abc'"),
        ("meta_uid_digit_str", r"'user_id' must be a JSON integer such as 3, got '3' \(str\).*without quotes"),
        ("meta_uid_float", r"'user_id' must be a JSON integer.*1\.5"),
        ("meta_duplicate", r"'user0_000.png' is listed twice"),
        ("all_unreadable", r"none of the 2 images .* could be read"),
    ],
)
def test_bad_data_raises_one_clear_error(tmp_path, case, pattern):
    root = tmp_path / "data"
    root.mkdir()
    meta = root / "metadata.json"
    if case == "missing_root":
        root = tmp_path / "nope"
    elif case == "root_is_file":
        root = meta
        meta.write_text("[]")
    elif case == "empty_root":
        pass
    elif case == "loose_images":
        jet_png(root / "a.png")
        jet_png(root / "b.png")
    elif case == "empty_user":
        make_hier(root, ["user_0"], per_user=2)
        (root / "user_1").mkdir()
        (root / "user_1" / "notes.txt").write_text("x")
    elif case == "duplicate_number":
        make_hier(root, ["user_1", "user_01"], per_user=2)
    elif case == "num_users":
        make_hier(root, ["user_0", "user_1"], per_user=2)
    elif case == "all_unreadable":
        (root / "user_0").mkdir()
        (root / "user_0" / "a.png").write_bytes(b"")
        (root / "user_0" / "b.png").write_text("hello")
    else:
        make_flat(root, ids=[0, 1], per_user=1)
        entries = json.loads(meta.read_text())
        outside = tmp_path / "x.png"
        jet_png(outside)
        edit = {
            "meta_not_json": lambda: meta.write_text("{not json"),
            "meta_not_list": lambda: meta.write_text(json.dumps({"filename": "a.png", "user_id": 0})),
            "meta_empty": lambda: meta.write_text("[]"),
            "meta_no_field": lambda: meta.write_text(json.dumps([entries[0], {"filename": "user1_000.png"}])),
            "meta_outside_dotdot": lambda: meta.write_text(json.dumps([entries[0], {"filename": "../x.png", "user_id": 1}])),
            "meta_outside_abs": lambda: meta.write_text(json.dumps([entries[0], {"filename": str(outside), "user_id": 1}])),
            "meta_missing_file": lambda: meta.write_text(json.dumps(entries + [{"filename": "gone.png", "user_id": 1}])),
            "meta_uid_str": lambda: meta.write_text(json.dumps([entries[0], {"filename": "user1_000.png", "user_id": "abc"}])),
            "meta_uid_digit_str": lambda: meta.write_text(json.dumps([entries[0], {"filename": "user1_000.png", "user_id": "3"}])),
            "meta_uid_float": lambda: meta.write_text(json.dumps([entries[0], {"filename": "user1_000.png", "user_id": 1.5}])),
            "meta_duplicate": lambda: meta.write_text(json.dumps(entries + [entries[0]])),
        }
        edit[case]()
    num_users = 5 if case == "num_users" else None
    with pytest.raises(DataError, match=pattern) as info:
        MicroDopplerDataset(root, image_size=16, num_users=num_users)
    message = str(info.value)
    assert "\n" not in message
    if case.startswith("meta_"):
        assert "metadata.json" in message


def test_cli_inspect_data(tmp_path):
    data = make_hier(tmp_path / "data", ["ID_1", "ID_3"], per_user=4)
    (data / "ID_3" / "bad.png").write_bytes(b"")
    split_file = tmp_path / "split.json"
    result = CliRunner().invoke(cli, ["inspect-data", str(data), "--image-size", "16", "--split-file", str(split_file)])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "layout:    hierarchical" in out and "users:     2" in out
    assert "    0  ID_1        4  2/1/1  ID_1" in out and "    1  ID_3        4  2/1/1  ID_3" in out
    assert "skipped:   1" in out and "bad.png: zero-byte file" in out
    assert split_file.is_file()
    bad = CliRunner().invoke(cli, ["inspect-data", str(tmp_path / "missing")])
    assert bad.exit_code == 2 and "does not exist" in bad.output and "Traceback" not in bad.output
