"""The parts (processes) of a generation run: a part whose log a crash cut anywhere resumes."""

from helpers import cut_copies
from test_shards import PROCEDURAL

from data_gen.cli import main
from data_gen.runner import RunOptions, generate
from data_gen.settings import GenerationSettings
from solo_stablerep.data.manifest import read_manifest
from solo_stablerep.storage import iter_log


def test_a_part_log_cut_at_every_byte_of_its_last_record_resumes_twice(tmp_path):
    """A crash that cuts the part's log inside its last record: the rerun redoes that caption
    (its images rewritten in place), the log then holds every caption once, a second rerun has
    nothing to do, and the merge gives the uninterrupted run's manifest."""
    captions = tmp_path / "captions.txt"
    captions.write_text("a red 1\na blue 2\na green 3\n", encoding="utf-8")
    settings = GenerationSettings(**{**PROCEDURAL, "images_per_caption": 1})
    options = RunOptions(batch_size=1, contact_sheet_captions=0, merge=False, progress=False)
    pristine = tmp_path / "pristine"
    generate(captions, pristine, settings, options)
    log = "parts/part-00000-of-00001.jsonl"
    for cut, whole, out in cut_copies(pristine, log, tmp_path):
        (out / "parts" / "part-00000-of-00001.summary.json").unlink()
        generated = [generate(captions, out, settings, options)["captions_generated"]]
        generated += [generate(captions, out, settings, options)["captions_generated"]]
        assert generated == [0 if whole else 1, 0], cut
        assert [entry["index"] for entry in iter_log(out / log)] == [0, 1, 2], cut
    assert main(["merge", str(pristine)]) == 0
    assert [r.caption for r in read_manifest(pristine)[1]] == ["a red 1", "a blue 2", "a green 3"]
