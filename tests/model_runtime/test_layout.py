import numpy as np
import pytest

from model_runtime.layout import LayoutError, compact, emu3, emu35, get_layout


@pytest.mark.parametrize("layout", [emu35(), emu3(), compact(500, 1024)], ids=lambda lay: lay.name)
@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (12, 12), (32, 32)])
def test_image_round_trip(layout, shape):
    rng = np.random.default_rng(0)
    codes = rng.integers(0, layout.num_visual_codes, size=shape)
    toks = layout.serialize_image(codes)
    assert toks[0] == layout.boi and toks[-1] == layout.eoi
    assert np.array_equal(layout.parse_image(toks), codes)
    assert layout.find_images([1, 2] + toks + [3]) == [(2, 2 + len(toks))]


def test_emu35_ids_match_the_facts_table():
    lay = emu35()
    assert lay.vocab_size == 282_926 and lay.visual_offset == 151_854 and lay.num_visual_codes == 131_072
    assert (lay.pad, lay.eol, lay.eof, lay.bos, lay.eos, lay.img, lay.boi, lay.eoi) == (
        151643, 151846, 151847, 151849, 151850, 151851, 151852, 151853)
    assert lay.extra["assistant_start"] == 151746 and lay.extra["assistant_end"] == 151747
    assert lay.digit_ids[0] == 15 and lay.digit_ids[9] == 24 and lay.star_id == 9
    # 2x3 image: BOI '2' '*' '3' IMG c c c EOL c c c EOI  (no EOL after the last row)
    toks = lay.serialize_image(np.array([[0, 1, 2], [3, 4, 5]]))
    assert toks == [151852, 17, 9, 18, 151851, 151854, 151855, 151856, 151846, 151857, 151858, 151859, 151853]


def test_emu3_has_trailing_eol_eof():
    lay = emu3()
    assert lay.vocab_size == 184_622 and lay.num_visual_codes == 32_768
    toks = lay.serialize_image(np.array([[7]]))
    assert toks == [151852, 16, 9, 16, 151851, 151854 + 7, 151846, 151847, 151853]


def test_parse_errors_name_the_problem():
    lay = emu35()
    toks = lay.serialize_image(np.zeros((2, 2), int))
    with pytest.raises(LayoutError, match="BOI"):
        lay.parse_image(toks[1:])
    bad = list(toks)
    bad[-2] = lay.eol
    with pytest.raises(LayoutError, match="not a visual token"):
        lay.parse_image(bad)
    with pytest.raises(LayoutError, match="needs"):
        lay.parse_image(toks[:-2] + [lay.eoi])
    with pytest.raises(LayoutError, match="visual codes"):
        lay.serialize_image(np.array([[131_072]]))
    with pytest.raises(ValueError, match="unknown token layout"):
        get_layout("emu4")
