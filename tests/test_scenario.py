"""Scenario format v1: the shipped files load, and every class of mistake is reported as FILE:LINE: FIELD."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from voiceload.audio import wav
from voiceload.core.scenario import Prompt, Scenario, load_scenario
from voiceload.errors import ScenarioError, UserError

REPO = Path(__file__).resolve().parent.parent


def tone(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * wav.SAMPLE_RATE)) / wav.SAMPLE_RATE
    return (8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A scenario directory with one good recording, `ok.wav` (0.5 s)."""
    wav.write_wav(tmp_path / "ok.wav", tone(0.5))
    return tmp_path


def write(folder: Path, text: str, name: str = "s.yaml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def problems(folder: Path, text: str) -> list[str]:
    """The problems reported for `text`, with the file name shortened to F."""
    path = write(folder, text)
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    assert str(info.value) == "\n".join(info.value.problems)
    return [p.replace(str(path), "F", 1) for p in info.value.problems]


MINIMAL = """
    version: 1
    name: minimal
    turns:
      - caller: ok.wav
"""


# --- valid files ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "turns", "hangup_by"), [("demo", 2, "caller"), ("booking", 3, "bot")])
def test_shipped_scenarios_load(name: str, turns: int, hangup_by: str) -> None:
    s = load_scenario(REPO / "scenarios" / f"{name}.yaml")
    assert s.name == name
    assert s.path.is_absolute() and s.path.name == f"{name}.yaml"
    assert s.greeting is not None and s.greeting.path.is_file()
    assert len(s.turns) == turns
    assert [t.index for t in s.turns] == list(range(turns))
    for t in s.turns:
        assert t.caller.is_absolute() and t.caller.is_file()
        assert t.transcript  # from the sidecar .txt
        assert t.reply is not None and t.reply.path.is_file()
    assert s.hangup_by == hangup_by


def test_demo_transcripts_come_from_the_sidecar_files() -> None:
    s = load_scenario(REPO / "scenarios" / "demo.yaml")
    assert [t.transcript for t in s.turns] == ["A large latte, please.", "It is for Alex."]
    assert s.hangup_after_ms == 300


def test_defaults(folder: Path) -> None:
    s = load_scenario(write(folder, MINIMAL))
    assert s == Scenario(
        path=(folder / "s.yaml").resolve(), name="minimal", description="", greeting=None,
        turns=s.turns, silence_gap_ms=500, hangup_by="caller", hangup_after_ms=300,
        answer_timeout_ms=5000, max_call_ms=120_000,
    )
    assert s.slos == ()
    (turn,) = s.turns
    assert (turn.index, turn.transcript, turn.reply) == (0, None, None)
    assert turn.caller == (folder / "ok.wav").resolve()


def test_all_fields(folder: Path) -> None:
    (folder / "rec").mkdir()
    wav.write_wav(folder / "rec" / "hello.wav", tone(1.0))
    (folder / "rec" / "hello.txt").write_text("  Hello there.\n", encoding="utf-8")
    s = load_scenario(write(folder, """
        version: 1
        name: full
        description: all of it
        silence_gap_ms: 700
        answer_timeout_ms: 2000
        max_call_ms: 30000
        greeting: {prompt: ok.wav, max_wait_ms: 1500}
        turns:
          - caller: rec/hello.wav
            reply: {prompt: ok.wav}
          - caller: ok.wav
            transcript: "Written here."
            reply: null
        hangup: {by: bot, after_ms: 0}
    """, name="sub.yaml"))
    assert s.description == "all of it"
    assert (s.silence_gap_ms, s.answer_timeout_ms, s.max_call_ms) == (700, 2000, 30000)
    assert s.greeting == Prompt(path=(folder / "ok.wav").resolve(), max_wait_ms=1500)
    assert s.turns[0].transcript == "Hello there."
    assert s.turns[0].reply == Prompt(path=(folder / "ok.wav").resolve(), max_wait_ms=3000)
    assert s.turns[1].transcript == "Written here."
    assert s.turns[1].reply is None
    assert (s.hangup_by, s.hangup_after_ms) == ("bot", 0)


def test_paths_resolve_against_the_scenario_file_not_the_working_directory(
    folder: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(folder, MINIMAL)
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    assert load_scenario(path).turns[0].caller == (folder / "ok.wav").resolve()


# --- the file itself -----------------------------------------------------------------------------


def test_missing_scenario_file_is_a_plain_user_error(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(UserError) as info:
        load_scenario(path)
    assert not isinstance(info.value, ScenarioError)
    assert str(info.value) == f"{path}: no such scenario file"


def test_yaml_syntax_error_names_its_line(folder: Path) -> None:
    (p,) = problems(folder, """
        version: 1
        name: x
          turns: 3
    """)
    assert p == "F:3: (document): YAML syntax error: mapping values are not allowed here"


def test_empty_file_and_non_mapping_top_level(folder: Path) -> None:
    assert problems(folder, "") == [
        "F:1: (document): the file is empty; a scenario needs at least version, name and turns"
    ]
    (p,) = problems(folder, "# comment\n- 1\n- 2\n")
    assert p.startswith("F:2: (document): must be a mapping with keys (version, name,")
    assert p.endswith("got a list")


# --- keys, types, ranges -------------------------------------------------------------------------


def test_unknown_keys_suggest_the_closest_valid_one(folder: Path) -> None:
    assert problems(folder, """
        version: 1
        name: x
        silence_gap: 500
        greeting:
          prompt: ok.wav
          max_wiat_ms: 100
        turns:
          - caller: ok.wav
            replay: {prompt: ok.wav}
        colour: blue
    """) == [
        "F:3: silence_gap: unknown key 'silence_gap' (did you mean 'silence_gap_ms'?)",
        "F:6: greeting.max_wiat_ms: unknown key 'max_wiat_ms' (did you mean 'max_wait_ms'?)",
        "F:9: turns[0].replay: unknown key 'replay' (did you mean 'reply'?)",
        "F:10: colour: unknown key 'colour' (valid keys: version, name, description, silence_gap_ms, "
        "answer_timeout_ms, max_call_ms, greeting, turns, hangup, slo, load, sip, early_media, media, speech)",
    ]


def test_duplicate_keys_are_reported(folder: Path) -> None:
    assert problems(folder, MINIMAL + "    name: again\n") == [
        "F:5: name: duplicate key (the earlier value would be silently replaced)"
    ]


def test_types_bool_is_not_an_integer(folder: Path) -> None:
    assert problems(folder, """
        version: 1
        name: 42
        silence_gap_ms: true
        answer_timeout_ms: "5000"
        max_call_ms: 1.5
        turns:
          - caller: ok.wav
            transcript: 12
    """) == [
        "F:2: name: must be a string, got an integer (42); put it in quotes to make it text",
        "F:3: silence_gap_ms: must be an integer (100..5000), got a boolean (true)",
        "F:4: answer_timeout_ms: must be an integer (500..60000), got a string ('5000')",
        "F:5: max_call_ms: must be an integer (1000..3600000), got a number with a fraction (1.5)",
        "F:8: turns[0].transcript: must be a string, got an integer (12); put it in quotes to make it text",
    ]


def test_ranges(folder: Path) -> None:
    assert problems(folder, """
        version: 1
        name: x
        silence_gap_ms: 99
        answer_timeout_ms: 60001
        max_call_ms: 999
        greeting: {prompt: ok.wav, max_wait_ms: 60001}
        turns:
          - caller: ok.wav
            reply: {prompt: ok.wav, max_wait_ms: 99}
        hangup: {by: caller, after_ms: -1}
    """) == [
        "F:3: silence_gap_ms: must be between 100 and 5000, got 99",
        "F:4: answer_timeout_ms: must be between 500 and 60000, got 60001",
        "F:5: max_call_ms: must be between 1000 and 3600000, got 999",
        "F:6: greeting.max_wait_ms: must be between 100 and 60000, got 60001",
        "F:9: turns[0].reply.max_wait_ms: must be between 100 and 60000, got 99",
        "F:10: hangup.after_ms: must be between 0 and 60000, got -1",
    ]


def test_version_must_be_the_integer_1(folder: Path) -> None:
    assert problems(folder, MINIMAL.replace("version: 1", "version: 2")) == [
        "F:1: version: unsupported version 2; this voiceload reads version 1"
    ]
    assert problems(folder, MINIMAL.replace("version: 1", 'version: "1"')) == [
        "F:1: version: must be the integer 1, got a string ('1')"
    ]


def test_missing_required_fields_point_at_the_parent_mapping(folder: Path) -> None:
    assert problems(folder, """
        # a comment first: the mapping starts on line 2
        description: no version, name or turns
    """) == [
        "F:2: version: required field is missing",
        "F:2: name: required field is missing",
        "F:2: turns: required field is missing",
    ]
    assert problems(folder, """
        version: 1
        name: x
        greeting: {max_wait_ms: 100}
        turns:
          - caller: ok.wav
          - transcript: no caller
            reply:
              max_wait_ms: 100
    """) == [
        "F:3: greeting.prompt: required field is missing",
        "F:6: turns[1].caller: required field is missing",
        "F:7: turns[1].reply.prompt: required field is missing",
    ]


def test_turns_shape_and_count(folder: Path) -> None:
    base = "version: 1\nname: x\n"
    assert problems(folder, base + "turns: []\n") == ["F:3: turns: must have 1 to 100 turns, got 0"]
    assert problems(folder, base + "turns: {caller: ok.wav}\n") == [
        "F:3: turns: must be a list of turns (each with `caller:`), got a mapping"
    ]
    many = base + "turns:\n" + "  - caller: ok.wav\n" * 101
    assert problems(folder, many) == ["F:3: turns: must have 1 to 100 turns, got 101"]
    assert problems(folder, base + "turns:\n  - ok.wav\n") == [
        "F:4: turns[0]: must be a mapping with keys (caller, dtmf, duration_ms, gap_ms, transcript, reply, intent, "
        "action), got a string ('ok.wav')"
    ]


def test_empty_strings_and_bad_hangup(folder: Path) -> None:
    assert problems(folder, """
        version: 1
        name: " "
        turns:
          - caller: ok.wav
            transcript: ""
        hangup:
          by: bott
    """) == [
        "F:2: name: must not be empty",
        "F:5: turns[0].transcript: must not be empty",
        "F:7: hangup.by: must be one of caller, bot; got 'bott' (did you mean 'bot'?)",
    ]


# --- recordings ----------------------------------------------------------------------------------


def test_every_wav_problem_is_reported_with_the_path_as_written(folder: Path) -> None:
    (folder / "corrupt.wav").write_bytes(np.random.default_rng(7).bytes(3000))
    sf.write(str(folder / "wide.wav"), np.zeros(8000, dtype=np.int16), 16000, subtype="PCM_16")
    sf.write(str(folder / "stereo.wav"), np.zeros((8000, 2), dtype=np.int16), 8000, subtype="PCM_16")
    sf.write(str(folder / "u8.wav"), np.zeros(8000, dtype=np.int16), 8000, subtype="PCM_U8")
    wav.write_wav(folder / "short.wav", tone(0.05))
    wav.write_wav(folder / "long.wav", np.zeros(121 * wav.SAMPLE_RATE, dtype=np.int16))
    assert problems(folder, """
        version: 1
        name: x
        greeting: {prompt: missing.wav}
        turns:
          - caller: corrupt.wav
            reply: {prompt: wide.wav}
          - caller: stereo.wav
            reply: {prompt: u8.wav}
          - caller: short.wav
          - caller: long.wav
    """) == [
        f"F:3: greeting.prompt: missing.wav: no such file ({folder.resolve() / 'missing.wav'})",
        "F:5: turns[0].caller: corrupt.wav: not a readable WAV file: Format not recognised.",
        "F:6: turns[0].reply.prompt: wide.wav: sample rate is 16000 Hz, must be 8000 Hz",
        "F:7: turns[1].caller: stereo.wav: has 2 channels, must be mono",
        "F:8: turns[1].reply.prompt: u8.wav: sample format is PCM_U8, must be 16-bit PCM (PCM_16)",
        "F:9: turns[2].caller: short.wav: lasts 0.050 s, must be 0.1 s to 120 s",
        "F:10: turns[3].caller: long.wav: lasts 121.000 s, must be 0.1 s to 120 s",
    ]


def test_problems_come_out_in_line_order_all_at_once(folder: Path) -> None:
    found = problems(folder, """
        version: 3
        nam: x
        turns:
          - caller: nope.wav
        hangup: {by: nobody}
    """)
    assert [p.split(":")[1] for p in found] == ["1", "1", "2", "4", "5"]
    assert [p.split(": ")[1] for p in found] == ["version", "name", "nam", "turns[0].caller", "hangup.by"]


def test_the_annotated_example_in_the_docs_is_valid(tmp_path: Path) -> None:
    doc = (REPO / "docs" / "scenarios.md").read_text(encoding="utf-8")
    example = doc.split("```yaml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "scenarios").mkdir()
    (tmp_path / "recordings").symlink_to(REPO / "recordings")
    s = load_scenario(write(tmp_path / "scenarios", example, name="example.yaml"))
    assert s.name == "demo" and len(s.turns) == 2
    assert s.turns[1].reply is not None and s.turns[1].reply.max_wait_ms == 3000
    assert s.slos == ("p95_turn_latency_ms<=1500", "completion_rate>=0.99")


# --- SLOs ----------------------------------------------------------------------------------------


def test_slo_list_is_parsed_and_kept_in_canonical_form(folder: Path) -> None:
    s = load_scenario(write(folder, MINIMAL + """
    greeting: {prompt: ok.wav}
    slo:
      - p95_turn_latency_ms <= 1500
      - completion_rate>=0.99
      - turn0_p99_latency_ms<2000
      - greeting_p95_onset_ms<=1000
      - setup_p95_ms<=500
    """))
    assert s.slos == ("p95_turn_latency_ms<=1500", "completion_rate>=0.99", "turn0_p99_latency_ms<2000",
                      "greeting_p95_onset_ms<=1000", "setup_p95_ms<=500")


def test_slo_may_be_empty_or_null(folder: Path) -> None:
    assert load_scenario(write(folder, MINIMAL + "    slo: []\n")).slos == ()
    assert load_scenario(write(folder, MINIMAL + "    slo:\n")).slos == ()


def test_a_scenario_built_without_slos_still_constructs(folder: Path) -> None:
    s = load_scenario(write(folder, MINIMAL))
    rebuilt = Scenario(path=s.path, name=s.name, description=s.description, greeting=s.greeting, turns=s.turns,
                       silence_gap_ms=s.silence_gap_ms, hangup_by=s.hangup_by, hangup_after_ms=s.hangup_after_ms,
                       answer_timeout_ms=s.answer_timeout_ms, max_call_ms=s.max_call_ms)
    assert rebuilt == s and rebuilt.slos == ()


def test_slo_problems_name_line_and_position(folder: Path) -> None:
    found = problems(folder, """
        version: 1
        name: x
        turns:
          - caller: ok.wav
          - caller: ok.wav
        slo:
          - p95_turn_latncy_ms<=1500
          - completion_rate>=99
          - 1500
          - turn2_p95_latency_ms<=400
          - greeting_p95_onset_ms<=900
          - completion_rate: 0.99
          - p95_turn_latency_ms == 1500
          - completion_rate>=0.9
    """)
    assert [p.split(": ", 2)[:2] for p in found] == [
        ["F:7", "slo[0]"], ["F:8", "slo[1]"], ["F:9", "slo[2]"], ["F:10", "slo[3]"], ["F:11", "slo[4]"],
        ["F:12", "slo[5]"], ["F:13", "slo[6]"],
    ]
    assert found[0].startswith("F:7: slo[0]: SLO 'p95_turn_latncy_ms<=1500': unknown metric "
                               "'p95_turn_latncy_ms' (did you mean 'p95_turn_latency_ms'?); metrics: ")
    assert found[1] == ("F:8: slo[1]: SLO 'completion_rate>=99': completion_rate is a fraction from 0 to 1, "
                        "got 99 (did you mean 0.99?)")
    assert found[2] == "F:9: slo[2]: must be a string, got an integer (1500); put it in quotes to make it text"
    assert found[3] == "F:10: slo[3]: SLO 'turn2_p95_latency_ms<=400': the scenario has no turn 2 (it has turns 0..1)"
    assert found[4] == "F:11: slo[4]: SLO 'greeting_p95_onset_ms<=900': the scenario has no greeting"
    assert found[5].startswith("F:12: slo[5]: must be one expression such as 'completion_rate>=0.99', got a mapping")
    assert found[6] == ("F:13: slo[6]: SLO 'p95_turn_latency_ms==1500': operator '==' is not supported "
                        "(an SLO is a bound: use <=, <, >= or >)")


def test_slo_must_be_a_list(folder: Path) -> None:
    assert problems(folder, MINIMAL + "    slo: completion_rate>=0.99\n") == [
        "F:5: slo: must be a list of SLO expressions (e.g. - p95_turn_latency_ms<=1500), "
        "got a string ('completion_rate>=0.99')"
    ]


def test_slo_turn_numbers_are_not_judged_when_the_turns_are_broken(folder: Path) -> None:
    assert problems(folder, """
        version: 1
        name: x
        turns:
          - caller: nope.wav
        slo: [turn5_p95_latency_ms<=400]
    """) == [f"F:4: turns[0].caller: nope.wav: no such file ({folder.resolve() / 'nope.wav'})"]


# --- load ----------------------------------------------------------------------------------------


def test_load_section_is_parsed(folder: Path) -> None:
    s = load_scenario(write(folder, MINIMAL + """
    load:
      shape: "ramp:0-100/2m, constant:100/5m"
      max_rate: 5
    """))
    assert s.load_shape is not None
    assert s.load_shape.text == "ramp:0-100/2m, constant:100/5m"
    assert (s.load_shape.duration_s, s.load_shape.peak) == (420.0, 100)
    assert s.max_rate == 5.0 and isinstance(s.max_rate, float)


def test_load_is_optional_and_its_keys_too(folder: Path) -> None:
    s = load_scenario(write(folder, MINIMAL))
    assert (s.load_shape, s.max_rate) == (None, None)
    s = load_scenario(write(folder, MINIMAL + "    load:\n"))
    assert (s.load_shape, s.max_rate) == (None, None)
    s = load_scenario(write(folder, MINIMAL + "    load: {max_rate: 0.5}\n"))
    assert (s.load_shape, s.max_rate) == (None, 0.5)
    s = load_scenario(write(folder, MINIMAL + "    load: {shape: 'constant:3/1m'}\n"))
    assert s.load_shape is not None and s.load_shape.peak == 3 and s.max_rate is None


def test_load_bad_shape_names_line_field_and_part(folder: Path) -> None:
    assert problems(folder, MINIMAL + """
    load:
      shape: "ramp:0-100/2m,constnt:100/5m"
    """) == [
        "F:7: load.shape: shape 'ramp:0-100/2m,constnt:100/5m': 'constnt:100/5m': unknown kind 'constnt' "
        "(did you mean 'constant'?); write one of constant:N/DUR, ramp:A-B/DUR, steps:A-B+S/DUR, "
        "spike:BASE-PEAK/DUR@AT+LEN"
    ]
    assert problems(folder, MINIMAL + "    load: {shape: 100}\n") == [
        "F:5: load.shape: must be a string, got an integer (100); put it in quotes to make it text"
    ]


@pytest.mark.parametrize("value", ["0", "-2", "fast", "true", ".inf", "[5]"])
def test_load_bad_max_rate(folder: Path, value: str) -> None:
    (found,) = problems(folder, MINIMAL + f"    load:\n      max_rate: {value}\n")
    assert found.startswith("F:6: load.max_rate: must be a number of new calls per second above 0 (e.g. 5 or 0.5), "
                            "got ")


def test_load_unknown_key_and_wrong_type(folder: Path) -> None:
    assert problems(folder, MINIMAL + """
    load:
      shape: "constant:5/1m"
      max_rte: 5
    """) == ["F:8: load.max_rte: unknown key 'max_rte' (did you mean 'max_rate'?)"]
    assert problems(folder, MINIMAL + "    load: constant:5/1m\n") == [
        "F:5: load: must be a mapping with keys (shape, max_rate), got a string ('constant:5/1m')"
    ]


def test_load_problems_come_with_the_others(folder: Path) -> None:
    assert problems(folder, """
        version: 1
        name: x
        silence_gap_ms: 1
        turns:
          - caller: ok.wav
        load: {shape: "constant:0/1m", max_rate: 0}
    """) == [
        "F:3: silence_gap_ms: must be between 100 and 5000, got 1",
        "F:6: load.shape: shape 'constant:0/1m': never asks for a call (every count is 0); "
        "the peak must be at least 1",
        "F:6: load.max_rate: must be a number of new calls per second above 0 (e.g. 5 or 0.5), got an integer (0)",
    ]


def test_early_media_defaults_to_ignore_and_may_listen(folder: Path) -> None:
    assert load_scenario(write(folder, MINIMAL)).early_media == "ignore"
    listen = load_scenario(write(folder, MINIMAL + "    early_media: listen\n"))
    assert listen.early_media == "listen"
    assert problems(folder, MINIMAL + "    early_media: lisen\n") == [
        "F:5: early_media: must be one of ignore, listen; got 'lisen' (did you mean 'listen'?)"]
    assert problems(folder, MINIMAL + "    early_media: true\n") == [
        "F:5: early_media: must be a string, got a boolean (true); put it in quotes to make it text"]
