"""The scene perceiver at runtime: targets, decoding, its directory format, scoring."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from model_runtime.prompt import format_perception, parse_perception
from model_runtime.scene_perceiver import (
    HELD_CANDIDATES,
    OTHER_NAMES,
    NameSlots,
    ScenePerceiver,
    ScenePerceiverConfig,
    ScenePerceiverNet,
    cell_targets,
    decode_perception,
    name_cell_targets,
    perceiver_loss,
    reader_loss,
    score_perception,
    summarise_scores,
)

NAMES = ["blue block", "red cup", "small red block", "teal fork"]


def _cfg(**kw) -> ScenePerceiverConfig:
    return ScenePerceiverConfig(names=list(NAMES), image_size=32, grid=4, width=8, layers=1, heads=2, **kw)


def _outputs(cfg: ScenePerceiverConfig, cells: dict[int, tuple[str, float]], holding: str | None):
    """Network outputs where cell k holds an object with probability p and names it (its words sure)."""
    slots = NameSlots(cfg.names)
    out = torch.full((cfg.grid * cfg.grid, 1 + slots.width), 0.0)
    out[:, 0] = -20.0

    def words(name: str) -> torch.Tensor:
        row = torch.full((slots.width,), -20.0)
        start = 0
        for k, ws in enumerate(slots.words):
            w = name.split()
            row[start + ws.index(w[-1 - k] if k < len(w) else "")] = 20.0
            start += len(ws)
        return row

    for k, (name, p) in cells.items():
        out[k, 0] = float(np.log(p / (1 - p)))
        out[k, 1:] = words(name)
    hold = torch.cat([torch.tensor([20.0 if holding else -20.0]), words(holding or cfg.names[0])])
    return slots, out, hold


def test_config_refuses_bad_fields_with_their_names():
    with pytest.raises(ValueError, match="width must be an integer >= 1, got 0"):
        ScenePerceiverConfig(names=list(NAMES), width=0)
    with pytest.raises(ValueError, match="must be 8 times grid 12"):
        ScenePerceiverConfig(names=list(NAMES), image_size=84, grid=12)
    with pytest.raises(ValueError, match=r"threshold must be a number in \(0, 1\)"):
        _cfg(threshold=1.0)
    with pytest.raises(ValueError, match="names must be unique"):
        ScenePerceiverConfig(names=["a", "a"])
    with pytest.raises(ValueError, match="multiple of heads"):
        ScenePerceiverConfig(names=list(NAMES), width=10, heads=4)
    with pytest.raises(ValueError, match="name_crop must be 0 .off. or a multiple of 4 >= 8, got 10"):
        _cfg(name_crop=10)


def test_cell_targets_put_each_object_in_the_cell_of_its_centre():
    names = {n: i + 1 for i, n in enumerate(NAMES)}
    cells, held, lost = cell_targets([("red cup", (3.0, 3.0)), ("teal fork", (31.9, 17.0)), ("blue block", (4.0, 2.0))],
                                     "small red block", names, grid=4, width=32, height=32)
    assert cells[0] == names["red cup"]  # (u 3, v 3): row 0, column 0
    assert cells[2 * 4 + 3] == names["teal fork"]  # v 17 -> row 2, u 31.9 -> column 3
    assert lost == 1  # the blue block's centre shares the red cup's cell: the first listed keeps it
    assert held == names["small red block"]
    assert (cells != 0).sum() == 2
    _, nothing, _ = cell_targets([], None, names, 4, 32, 32)
    assert nothing == 0


def test_name_targets_cover_the_cells_around_each_centre_with_the_nearest_object():
    names = {"red cup": 1, "teal fork": 2}
    objects = [("red cup", (3.0, 3.0)), ("teal fork", (17.0, 3.0))]  # cells (row 0, col 0) and (row 0, col 2)
    centre_only = name_cell_targets(objects, names, 4, 32, 32, radius=0).reshape(4, 4)
    assert centre_only[0, 0] == 1 and centre_only[0, 2] == 2 and (centre_only != 0).sum() == 2
    near = name_cell_targets(objects, names, 4, 32, 32, radius=1).reshape(4, 4)
    # column 1 lies within one cell of both centres: the fork's centre (u 17) is nearer its middle (u 12)
    assert near.tolist() == [[1, 2, 2, 2], [1, 2, 2, 2], [0, 0, 0, 0], [0, 0, 0, 0]]
    assert not name_cell_targets([], names, 4, 32, 32, radius=1).any()


def test_neighbour_name_targets_train_names_where_no_object_is_centred():
    torch.manual_seed(0)
    net = ScenePerceiverNet(_cfg())
    image = torch.rand(1, 3, 32, 32)
    cells = torch.zeros(1, 16, dtype=torch.long)
    cells[0, 5] = 2
    names = torch.from_numpy(name_cell_targets([(NAMES[1], (12.0, 12.0))], {NAMES[1]: 2}, 4, 32, 32, 1))[None]
    holding = torch.tensor([0])
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(60):
        loss, _ = perceiver_loss(net.slots, *net(image), cells, holding, object_weight=10.0, name_cells=names)
        opt.zero_grad()
        loss.backward()
        opt.step()
    cell_out, _ = net(image)
    read = net.slots.name_log_probs(cell_out[0, :, 1:]).argmax(-1) + 1
    assert (read[names[0] != 0] == 2).all()  # the centre and its 8 neighbours all name the object
    assert torch.sigmoid(cell_out[0, :, 0]).argmax() == 5  # the object is still found at its centre only


def test_names_are_read_word_by_word_from_their_end():
    slots = NameSlots(NAMES)
    assert slots.size == 3 and slots.words[0] == ["block", "cup", "fork"]
    assert slots.words[1] == ["blue", "red", "teal"] and slots.words[2] == ["", "small"]
    # "red cup": slot 0 "cup", slot 1 "red", slot 2 none
    assert slots.ids[NAMES.index("red cup")].tolist() == [1, 1, 0]
    # sure of "block" and "red", leaning to no size word: still the only known name with both words
    logits = torch.zeros(1, slots.width)
    logits[0, 0], logits[0, 3 + 1], logits[0, 6] = 9.0, 9.0, 2.0  # slot 0 "block", slot 1 "red", slot 2 ""
    lp = slots.name_log_probs(logits)[0]
    assert NAMES[int(lp.argmax())] == "small red block"
    assert torch.exp(lp).sum() == pytest.approx(1.0, abs=1e-5)  # a distribution over the known names
    logits[0, 3 + 1], logits[0, 3 + 0] = 0.0, 9.0  # "blue" instead of "red"
    assert NAMES[int(slots.name_log_probs(logits)[0].argmax())] == "blue block"


def test_decoding_lists_each_name_once_in_reading_order_above_the_threshold():
    cfg = _cfg()
    # teal fork in cell 1 (row 0, column 1) and, less sure, in cell 5; red cup in cell 12 (row 3,
    # column 0); a blue block at 0.3 stays below the threshold 0.5
    slots, cells, hold = _outputs(cfg, {1: ("teal fork", 0.9), 5: ("teal fork", 0.6), 12: ("red cup", 0.8),
                                        15: ("blue block", 0.3)}, holding="small red block")
    out = decode_perception(slots, cfg, cells, hold)
    assert [o["name"] for o in out["objects"]] == ["teal fork", "red cup"]  # band order: row 0 before row 3
    assert out["objects"][0]["pixel"] == [12.0, 4.0]  # the centre of cell (0, 1) on the 32 px frame
    assert out["objects"][0]["cell"] == "middle back"  # u 12 of 32: middle third; v 4: back half
    assert out["objects"][1]["cell"] == "left front"
    assert out["objects"][0]["p"] == pytest.approx(0.9, abs=1e-3)
    assert out["holding"] == "small red block"
    # the likeliest held names with P(held) * P(name | held), for frame verification (sure here)
    assert out["held_candidates"][0][0] == "small red block" and out["held_candidates"][0][1] == pytest.approx(1.0)
    assert len(out["held_candidates"]) == min(HELD_CANDIDATES, len(cfg.names))
    text = format_perception(out["objects"], out["holding"])
    assert text == "see teal fork middle back , red cup left front holding small red block ."
    assert parse_perception(text)["holding"] == "small red block"  # the text round-trips through the answer format
    nothing = decode_perception(*_outputs(cfg, {}, holding=None)[:1], cfg, *_outputs(cfg, {}, holding=None)[1:])
    assert nothing["objects"] == [] and nothing["holding"] is None
    assert all(p < 1e-6 for _, p in nothing["held_candidates"])  # nothing held: no name is likely held


def test_a_saved_perceiver_perceives_as_its_network_by_hand(tmp_path):
    torch.manual_seed(0)
    p = ScenePerceiver(ScenePerceiverNet(_cfg(threshold=0.05)))
    p.save(tmp_path / "p")
    assert json.loads((tmp_path / "p" / "config.json").read_text())["names"] == NAMES
    loaded = ScenePerceiver.load(tmp_path / "p")
    image = np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8)  # resized to 32 x 32
    seen, ms = loaded.perceive(image)
    from model_runtime.step_verifier import images_to_tensor

    with torch.no_grad():
        cells, hold = p.net(images_to_tensor([image], 32))
    assert seen == decode_perception(p.net.slots, p.cfg, cells[0], hold[0])
    assert ms > 0


def test_broken_perceiver_directories_are_one_line_errors(tmp_path):
    torch.manual_seed(0)
    ScenePerceiver(ScenePerceiverNet(_cfg())).save(tmp_path / "p")
    with pytest.raises(ValueError, match="cannot load"):
        ScenePerceiver.load(tmp_path / "missing")
    doc = json.loads((tmp_path / "p" / "config.json").read_text())
    doc["width"] = 16
    (tmp_path / "p" / "config.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="weights do not match its config") as err:
        ScenePerceiver.load(tmp_path / "p")
    assert "\n" not in str(err.value)


def test_the_loss_weights_object_cells_and_learns_a_fixed_scene():
    torch.manual_seed(0)
    cfg = _cfg()
    net = ScenePerceiverNet(cfg)
    image = torch.rand(2, 3, 32, 32)
    cells = torch.zeros(2, 16, dtype=torch.long)
    cells[0, 5], cells[1, 10] = 2, 4
    holding = torch.tensor([0, 1])
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    first = None
    for _ in range(60):
        loss, parts = perceiver_loss(net.slots, *net(image), cells, holding, object_weight=10.0)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.2 * first
    assert parts["found"] == 1.0 and parts["named"] == 1.0


def test_scores_count_names_cells_and_the_held_object():
    truth = {"objects": [{"name": "red cup", "cell": "left back"}, {"name": "teal fork", "cell": "right front"}],
             "holding": None}
    pred = {"objects": [{"name": "red cup", "cell": "left front"}, {"name": "blue block", "cell": "left back"}],
            "holding": None}
    s = score_perception(pred, truth)
    assert (s["tp"], s["fp"], s["fn"], s["cell_ok"], s["holding_ok"], s["exact"]) == (1, 1, 1, 0, 1, 0)
    out = summarise_scores([s, score_perception(truth, truth)])
    assert out["object_f1"] == pytest.approx(2 * 0.75 * 0.75 / 1.5)  # 3 of 4 said right, 3 of 4 true found
    assert out["cell_acc"] == pytest.approx(2 / 3) and out["exact"] == 0.5
    assert summarise_scores([score_perception(None, {"objects": [], "holding": None})])["object_f1"] == 1.0


def test_the_name_reader_crops_the_full_resolution_frame_around_each_cell_centre():
    net = ScenePerceiverNet(_cfg(name_crop=8))
    frames = net.with_coords(torch.rand(2, 3, 32, 32))
    assert net.cell_centres(torch.tensor([0, 5, 15])).tolist() == [[4, 4], [12, 12], [28, 28]]  # 8 px cells
    crops = net.reader.crops(frames, torch.tensor([1, 0]), torch.tensor([[12, 12], [30, 2]]))
    assert crops.shape == (2, 5, 8, 8)
    assert torch.equal(crops[0], frames[1, :, 8:16, 8:16])  # centred: 4 pixels either side
    assert torch.equal(crops[1, :, 2:, :6], frames[0, :, 0:6, 26:32])  # the frame's corner ...
    assert crops[1, :, :2].abs().sum() == 0 and crops[1, :, :, 6:].abs().sum() == 0  # ... and zeros outside it


def test_decoding_names_a_cell_by_both_heads_when_the_perceiver_has_a_reader():
    cfg = _cfg(name_crop=8)
    slots, cells, hold = _outputs(cfg, {1: ("teal fork", 0.9)}, holding=None)
    cells[1, 1:] = 0.0  # the cell head cannot tell
    fork = _outputs(cfg, {1: ("red cup", 0.9)}, holding=None)[1][1:2, 1:]  # the reader says "red cup"
    asked = []

    def read(c):
        asked.append(c.tolist())
        return fork.expand(len(c), -1)

    assert [o["name"] for o in decode_perception(slots, cfg, cells, hold, read)["objects"]] == ["red cup"]
    assert asked == [[1]]  # only the firing cells are read


def test_the_reader_loss_learns_names_from_crops_at_named_cells():
    torch.manual_seed(0)
    net = ScenePerceiverNet(_cfg(name_crop=8))
    images = torch.rand(2, 3, 32, 32)
    named = torch.zeros(2, 16, dtype=torch.long)
    named[0, 5], named[0, 6], named[1, 10] = 2, 2, 4  # cell 6 is a neighbour of the centre cell 5
    centres = named.clone()
    centres[0, 6] = 0
    opt = torch.optim.Adam(net.reader.parameters(), lr=3e-3)
    first = None
    for _ in range(40):
        loss, parts = reader_loss(net, images, centres, named, max_crops=8)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.2 * first and parts["read"] == 1.0
    # at most max_crops crops, the centre cells first: with 2, exactly cells 5 (image 0) and 10 (image 1)
    two, _ = reader_loss(net, images, centres, named, max_crops=2)
    by_hand = net.slots.loss(net.read_names(images, torch.tensor([0, 1]), torch.tensor([5, 10])), torch.tensor([2, 4]))
    assert torch.allclose(two, by_hand)


def test_each_object_comes_with_its_cells_next_likeliest_names():
    cfg = _cfg()
    slots, cells, hold = _outputs(cfg, {1: ("teal fork", 0.9), 12: ("blue block", 0.8)}, holding=None)
    row, start = torch.full((slots.width,), -20.0), 0
    for ws, sure in zip(slots.words, ({"fork": 2.0, "cup": 1.5}, {"teal": 2.0, "red": 1.5}, {"": 20.0})):
        for w, logit in sure.items():
            row[start + ws.index(w)] = logit
        start += len(ws)
    cells[1, 1:] = row  # a fork, though a cup is nearly as likely; teal, though red is nearly as likely
    out = decode_perception(slots, cfg, cells, hold)
    fork = next(o for o in out["objects"] if o["name"] == "teal fork")
    others = fork["other_names"]
    assert [n for n, _ in others][0] == "red cup" and len(others) == min(OTHER_NAMES, len(cfg.names) - 1)
    assert others[0][1] == pytest.approx(float(torch.sigmoid(torch.tensor(-1.0))), abs=1e-3)  # e^3 / (e^4 + e^3)
    assert all(a[1] >= b[1] for a, b in zip(others, others[1:])) and "teal fork" not in [n for n, _ in others]
    block = next(o for o in out["objects"] if o["name"] == "blue block")
    assert all(p < 1e-6 for _, p in block["other_names"])  # a sure reading: nothing else is likely
