"""Failure traces: AVT, FTA and JSONL readers, their errors, mapping, cut, loop, round trip."""

from __future__ import annotations

import itertools
import random
import re
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim import trace_examples
from sim.traces import (
    DOWN_EVENTS,
    EVENTS,
    UP_EVENTS,
    ParamValue,
    TraceError,
    TraceEvent,
    cut,
    dump_jsonl,
    loop,
    map_trace,
    node_assignment,
    parse_avt,
    parse_fta,
    parse_jsonl,
    read_avt,
    read_fta,
    read_jsonl,
    to_jsonl,
    trace_nodes,
)
from tests.sim.helpers import REPO, SCENARIOS

TRACES = SCENARIOS / "traces"
FTA_HEADER = (
    "event_id\tcomponent_id\tnode_id\tplatform_id\tnode_name\tevent_type\t"
    "event_start_time\tevent_stop_time\tevent_end_reason"
)


def states(events: list[TraceEvent]) -> dict[str | None, list[tuple[float, str]]]:
    nodes: dict[str | None, list[tuple[float, str]]] = {}
    for event in events:
        nodes.setdefault(event.node, []).append((event.time_s, event.event))
    return nodes


def fails_at(line: str, problem: str) -> pytest.RaisesExc[TraceError]:
    """Expect one TraceError for `line` (`path:number`) whose problem contains `problem`."""
    return pytest.raises(TraceError, match="^" + re.escape(line) + ": .*" + re.escape(problem))


# --------------------------------------------------------------------------- shipped examples


@pytest.mark.parametrize("name", sorted(trace_examples.EXAMPLES))
def test_shipped_examples_are_what_the_generator_builds(name: str) -> None:
    """scenarios/traces/ holds exactly what `python -m sim.trace_examples` writes."""
    assert (TRACES / name).read_text(encoding="utf-8") == trace_examples.EXAMPLES[name]()


def test_office_week_avt() -> None:
    """office-week.avt: ten desktops, each alternating up/down from an up, within the week."""
    path = TRACES / "office-week.avt"
    events = read_avt(path)
    assert sorted(trace_nodes(events)) == [f"pc-{index:02d}" for index in range(1, 11)]
    assert [event.time_s for event in events] == sorted(event.time_s for event in events)
    for node_events in states(events).values():
        kinds = [kind for _, kind in node_events]
        assert kinds == ["up", "down"] * (len(kinds) // 2)
        assert all(0 <= time_s <= 7 * 86_400 for time_s, _ in node_events)
    weekend = [event for event in events if 5 * 86_400 <= event.time_s < 7 * 86_400]
    assert weekend == []
    first = events[0]
    assert first.node is not None
    assert first.origin == f"{path}:{4 + int(first.node[3:])}"  # four comment lines, then pc-01


def test_lab_failures_fta_by_name_and_by_id() -> None:
    """lab-failures.fta.tsv: six machines, up at the epoch origin, alternating, two days."""
    by_name = read_fta(TRACES / "lab-failures.fta.tsv", node_column="node_name")
    assert trace_nodes(by_name) == [f"lab-{index:02d}" for index in range(1, 7)]
    origin_s = trace_examples.LAB_EPOCH_S
    for node_events in states(by_name).values():
        assert node_events[0] == (float(origin_s), "up")
        kinds = [kind for _, kind in node_events]
        assert all(a != b for a, b in itertools.pairwise(kinds))
        assert all(origin_s <= time_s <= origin_s + 2 * 86_400 for time_s, _ in node_events)
    by_id = read_fta(TRACES / "lab-failures.fta.tsv")
    assert trace_nodes(by_id) == [str(100 + index) for index in range(1, 7)]
    assert [(e.time_s, e.event) for e in by_id] == [(e.time_s, e.event) for e in by_name]
    window = cut(by_name, origin_s, origin_s + 86_400)
    assert window[0].time_s == 0.0
    assert all(0.0 <= event.time_s < 86_400 for event in window)


def test_responder_crash_jsonl() -> None:
    """responder-crash.jsonl: subnet a's top-ranked peers crash in turn; a partition heals."""
    events = read_jsonl(TRACES / "responder-crash.jsonl")
    assert [(event.time_s, event.node, event.event) for event in events[:3]] == [
        (30.0, "s1-a-000", "crash"),
        (45.0, "s1-a-001", "crash"),
        (60.0, "s1-a-000", "restart"),
    ]
    partition = next(event for event in events if event.event == "partition")
    assert (partition.node, partition.subnet, partition.params) == (None, "b", {"side": "b-switch"})
    assert any(event.event == "heal" and event.node is None for event in events)
    assert events[0].origin.endswith("responder-crash.jsonl:1")


def test_examples_are_documented() -> None:
    """Every shipped trace is described in scenarios/traces/README.md; docs/traces.md exists."""
    readme = (TRACES / "README.md").read_text(encoding="utf-8")
    for name in trace_examples.EXAMPLES:
        assert f"`{name}`" in readme
    guide = (REPO / "docs" / "traces.md").read_text(encoding="utf-8")
    for heading in ("## AVT", "## FTA", "## JSONL"):
        assert heading in guide
    for path in (TRACES / "office-week.avt", TRACES / "lab-failures.fta.tsv"):
        assert path.read_text(encoding="utf-8").startswith(f"# {path.name}: ")


# --------------------------------------------------------------------------- AVT


def test_avt_intervals_become_ups_and_downs() -> None:
    """Each interval is an up at its start and a down at its end; comments are ignored."""
    text = "# two nodes\n\nb 2 0 10 20 30  # trailing comment\na 1 5 6.5\n"
    events = parse_avt(text, "t.avt")
    assert [(e.time_s, e.node, e.event) for e in events] == [
        (0.0, "b", "up"),
        (5.0, "a", "up"),
        (6.5, "a", "down"),
        (10.0, "b", "down"),
        (20.0, "b", "up"),
        (30.0, "b", "down"),
    ]
    assert events[1].origin == "t.avt:4"
    assert parse_avt("idle 0\n") == []


@pytest.mark.parametrize(
    ("text", "line", "problem"),
    [
        ("# c\nn1 2 0 10 x 30\n", 2, "time 3: expected a time in seconds, got 'x'"),
        ("n0 1 0 5\n\nn1 two 0 10\n", 3, "interval count: expected an integer >= 0, got 'two'"),
        ("n0 1 0 5\nn1 1 -3 10\n", 2, "time 1: negative time '-3'"),
        ("n0 1 0 5\n# c\n\nn1 1 20 10\n", 4, "up interval 1 goes backwards"),
        ("n1 2 0 10 10 20\n", 1, "up interval 2 starts at 10 s: does not start after"),
        ("n1 2 0 10 5 20\n", 1, "up interval 2 starts at 5 s: does not start after"),
        ("n1 1 7 7\n", 1, "up interval 1 is empty"),
        ("n1 2 0 10 20\n", 1, "expected 4 times (2 intervals), got 3"),
        ("n1 1 0 10\nn2 1 0 1\nn1 1 20 30\n", 3, "node 'n1' already listed on line 1"),
        ("n1 1 0 10\nlonely\n", 2, "expected 'node count start end ...'"),
        ("n1 1 0 nan\n", 1, "time 2: expected a time in seconds, got 'nan'"),
    ],
)
def test_avt_errors_name_the_line(text: str, line: int, problem: str) -> None:
    """Each malformed AVT line is one TraceError naming `path:line`."""
    with fails_at(f"bad.avt:{line}", problem):
        parse_avt(text, "bad.avt")


# --------------------------------------------------------------------------- FTA


def fta(*rows: str, header: bool = True) -> str:
    return "\n".join(((FTA_HEADER,) if header else ()) + rows) + "\n"


def test_fta_rows_become_transitions_and_touching_intervals_merge() -> None:
    """Alternating rows give one transition each; touching same-kind rows merge."""
    text = fta(
        "1\t1\t7\t1\tpc\t1\t0\t10\t\\N",
        "2\t1\t7\t1\tpc\t0\t10\t20\t\\N",
        "3\t1\t7\t1\tpc\t0\t20\t30\t\\N",
        "4\t1\t7\t1\tpc\t1\t30\t40\tNULL",
        "5\t1\t7\t1\tpc\t1\t40\t50\t",
    )
    events = parse_fta(text, "t.tsv")
    assert [(e.time_s, e.node, e.event) for e in events] == [
        (0.0, "7", "up"),
        (10.0, "7", "down"),
        (30.0, "7", "up"),
        (50.0, "7", "down"),
    ]


def test_fta_gaps_between_rows_do_not_repeat_a_state() -> None:
    """An unavailability row, a gap, then an availability row: one up, not two."""
    text = fta("1\t1\t7\t1\tpc\t0\t10\t20\t0", "2\t1\t7\t1\tpc\t1\t30\t40\t0")
    assert [(e.time_s, e.event) for e in parse_fta(text)] == [
        (10.0, "down"),
        (20.0, "up"),
        (40.0, "down"),
    ]


def test_fta_without_header_and_with_reordered_columns() -> None:
    """Headerless files use the nine standard columns; a header may reorder and alias them."""
    plain = fta("1\t1\t7\t1\tpc\t1\t100\t200\t0", header=False)
    reordered = "node_name\tevent_start_time\tevent_end_time\tevent_type\npc\t100\t200\t1\n"
    expected = [(100.0, "up"), (200.0, "down")]
    assert [(e.time_s, e.event) for e in parse_fta(plain)] == expected
    events = parse_fta(reordered, node_column="node_name")
    assert [(e.time_s, e.node, e.event) for e in events] == [
        (100.0, "pc", "up"),
        (200.0, "pc", "down"),
    ]


def test_fta_interleaved_nodes_are_sorted_by_time() -> None:
    """Rows of different nodes may interleave; events come out in time order."""
    text = fta(
        "1\t1\t7\t1\ta\t1\t0\t50\t0",
        "2\t2\t8\t1\tb\t0\t10\t20\t0",
        "3\t1\t7\t1\ta\t0\t50\t60\t0",
    )
    assert [(e.time_s, e.node, e.event) for e in parse_fta(text)] == [
        (0.0, "7", "up"),
        (10.0, "8", "down"),
        (20.0, "8", "up"),
        (50.0, "7", "down"),
        (60.0, "7", "up"),
    ]


GOOD_ROW = "1\t1\t7\t1\tpc\t1\t0\t10\t0"


@pytest.mark.parametrize(
    ("text", "line", "problem"),
    [
        ("# c\nevent_id\tnode\tevent_type\n", 2, "unknown column 'node'"),
        (
            "node_id\tevent_type\tevent_start_time\n7\t1\t0\n",
            1,
            "missing column 'event_stop_time'",
        ),
        ("node_id\tnode_id\tevent_type\n", 1, "column 'node_id' appears twice"),
        (fta(GOOD_ROW, "2\t1\t7\t1\tpc\t1\t20"), 3, "expected 9 tab-separated columns"),
        (fta(GOOD_ROW, "2\t1\t7\t1\tpc\t2\t20\t30\t0"), 3, "event_type: expected 0 (unavailable)"),
        (fta("# c", GOOD_ROW, "2\t1\t7\t1\tpc\t1\tsoon\t30\t0"), 4, "event_start_time: expected"),
        (fta(GOOD_ROW, "2\t1\t8\t1\tpc\t1\t-5\t30\t0"), 3, "event_start_time: negative time"),
        (fta(GOOD_ROW, "2\t1\t7\t1\tpc\t1\t40\t30\t0"), 3, "interval goes backwards"),
        (fta(GOOD_ROW, "2\t1\t7\t1\tpc\t1\t30\t30\t0"), 3, "interval is empty"),
        (
            fta(GOOD_ROW, "2\t1\t8\t1\tpc\t1\t0\t30\t0", "3\t1\t7\t1\tpc\t0\t5\t30\t0"),
            4,
            "before its previous one (line 2) ends at 10 s",
        ),
        (fta(GOOD_ROW, "x\t1\t7\t1\tpc\t1\t20\t30\t0"), 3, "event_id: expected an integer"),
        (fta(GOOD_ROW, "2\t1\t\\N\t1\tpc\t1\t20\t30\t0"), 3, "node_id: expected a node"),
    ],
)
def test_fta_errors_name_the_line(text: str, line: int, problem: str) -> None:
    """Each malformed FTA row is one TraceError naming `path:line`."""
    with fails_at(f"bad.tsv:{line}", problem):
        parse_fta(text, "bad.tsv")


def test_fta_node_column_is_checked() -> None:
    """Only node_id and node_name can name nodes."""
    with pytest.raises(ValueError, match="node_column"):
        parse_fta(fta(GOOD_ROW), node_column="platform_id")


# --------------------------------------------------------------------------- JSONL


def test_jsonl_reads_every_field() -> None:
    """Times, node, site, subnet and params are read; blank lines skipped; ints become floats."""
    text = (
        '{"time_s": 1, "node": "n1", "site": "s", "subnet": "a", "event": "crash"}\n'
        "\n"
        '{"time_s": 2.5, "subnet": "a", "event": "partition", "params": {"side": "x", "n": 2}}\n'
        '{"time_s": 2.5, "event": "heal", "node": null}\n'
    )
    events = parse_jsonl(text, "t.jsonl")
    assert events == [
        TraceEvent(1.0, "n1", "crash", "s", "a"),
        TraceEvent(2.5, None, "partition", None, "a", {"side": "x", "n": 2}),
        TraceEvent(2.5, None, "heal"),
    ]
    assert [event.origin for event in events] == ["t.jsonl:1", "t.jsonl:3", "t.jsonl:4"]
    assert type(events[0].time_s) is float


OK = '{"time_s": 1, "node": "n1", "event": "crash"}'


@pytest.mark.parametrize(
    ("lines", "line", "problem"),
    [
        ([OK, '{"time_s": 2, "node": "n1", "event": "restart"'], 2, "Expecting"),
        ([OK, "[1, 2]"], 2, "expected a JSON object"),
        ([OK, "", '{"time_s": 2, "nodes": "n2", "event": "crash"}'], 3, "unknown key 'nodes'"),
        ([OK, '{"time_s": 2, "time_s": 3, "event": "heal"}'], 2, "duplicate key 'time_s'"),
        ([OK, '{"node": "n2", "event": "crash"}'], 2, "time_s: missing required key"),
        ([OK, '{"time_s": "2", "node": "n2", "event": "crash"}'], 2, "time_s: expected a number"),
        ([OK, '{"time_s": true, "node": "n2", "event": "crash"}'], 2, "time_s: expected a number"),
        ([OK, '{"time_s": NaN, "node": "n2", "event": "crash"}'], 2, "NaN is not a number"),
        (['{"time_s": -1, "node": "n2", "event": "crash"}'], 1, "time_s: negative time -1"),
        ([OK, '{"time_s": 0.5, "node": "n2", "event": "crash"}'], 2, "time_s goes backwards"),
        ([OK, '{"time_s": 2, "node": "n2", "event": "reboot"}'], 2, "event: expected one of"),
        ([OK, '{"time_s": 2, "node": 7, "event": "crash"}'], 2, "node: expected a non-empty"),
        ([OK, '{"time_s": 2, "site": "", "event": "crash"}'], 2, "site: expected a non-empty"),
        ([OK, '{"time_s": 2, "event": "crash"}'], 2, "crash needs a target"),
        (
            [OK, '{"time_s": 2, "node": "n2", "event": "crash", "params": []}'],
            2,
            "params: expected",
        ),
        (
            [OK, '{"time_s": 2, "node": "n2", "event": "crash", "params": {"a": [1]}}'],
            2,
            "params.a: expected a string, number, boolean or null",
        ),
        ([OK, '{"time_s": 2, "node": "n2", "event": "slow"}'], 2, "slow needs params.delay_s"),
        (
            [OK, '{"time_s": 2, "subnet": "a", "event": "partition", "params": {"side": 3}}'],
            2,
            "partition: params.side must be a non-empty string, got 3",
        ),
        (
            [OK, '{"time_s": 2, "node": "n1", "event": "slow", "params": {"delay_s": -1}}'],
            2,
            "slow needs params.delay_s >= 0",
        ),
        (
            [
                OK,
                '{"time_s": 2, "node": "n2", "event": "up"}',
                '{"time_s": 3, "node": "n1", "event": "down"}',
            ],
            3,
            "down: node 'n1' is already down (since line 1)",
        ),
        (
            [
                '{"time_s": 0, "node": "n1", "event": "start"}',
                '{"time_s": 3, "node": "n1", "event": "up"}',
            ],
            2,
            "up: node 'n1' is already up (since line 1)",
        ),
    ],
)
def test_jsonl_errors_name_the_line(lines: list[str], line: int, problem: str) -> None:
    """Each malformed JSONL line is one TraceError naming `path:line`."""
    with fails_at(f"bad.jsonl:{line}", problem):
        parse_jsonl("\n".join(lines) + "\n", "bad.jsonl")


def test_to_jsonl_leaves_out_empty_fields() -> None:
    """Null fields and empty params are not written; the format stays one object per line."""
    text = to_jsonl([TraceEvent(3.0, "n1", "stop"), TraceEvent(4.0, None, "heal")])
    assert text == (
        '{"time_s": 3.0, "node": "n1", "event": "stop"}\n{"time_s": 4.0, "event": "heal"}\n'
    )


names = st.text(min_size=1, max_size=6)
scalars: st.SearchStrategy[ParamValue] = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=6)
)


@st.composite
def valid_traces(draw: st.DrawFn) -> list[TraceEvent]:
    """Traces `parse_jsonl` accepts: ordered times, consistent up/down per node."""
    times = sorted(draw(st.lists(st.floats(0.0, 1e9), max_size=12)))
    state: dict[str, str] = {}
    events: list[TraceEvent] = []
    for time_s in times:
        node = draw(st.none() | st.sampled_from(["n1", "n2"]) | names)
        site, subnet = draw(st.none() | names), draw(st.none() | names)
        now = state.get(node) if node is not None else None
        blocked = DOWN_EVENTS if now == "down" else UP_EVENTS if now == "up" else ()
        kind = draw(st.sampled_from([kind for kind in EVENTS if kind not in blocked]))
        if kind != "heal" and node is None and site is None and subnet is None:
            subnet = "everyone"
        params = draw(st.dictionaries(st.text(max_size=5), scalars, max_size=3))
        if kind == "slow":
            params["delay_s"] = draw(st.floats(0.0, 10.0))
        if kind == "partition":
            params["side"] = draw(names)
        if node is not None and kind in DOWN_EVENTS + UP_EVENTS:
            state[node] = "down" if kind in DOWN_EVENTS else "up"
        events.append(TraceEvent(time_s, node, kind, site, subnet, params))
    return events


@settings(max_examples=150, deadline=None)
@given(valid_traces())
def test_jsonl_round_trip(events: list[TraceEvent]) -> None:
    """dump_jsonl then read_jsonl gives back equal events, whatever the names and params."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "trace.jsonl"
        dump_jsonl(events, path)
        assert read_jsonl(path) == events
    assert parse_jsonl(to_jsonl(events)) == events


# --------------------------------------------------------------------------- mapping

TRACE = parse_jsonl(
    '{"time_s": 1, "node": "alpha", "event": "crash"}\n'
    '{"time_s": 2, "node": "beta", "event": "crash"}\n'
    '{"time_s": 3, "event": "heal"}\n'
    '{"time_s": 4, "node": "gamma", "event": "stop"}\n'
    '{"time_s": 5, "node": "alpha", "event": "restart"}\n',
    "m.jsonl",
)
TOPOLOGY = ["s1-a-000", "s1-a-001", "s1-a-002", "s1-a-003"]


def test_round_robin_deals_nodes_in_first_appearance_order() -> None:
    """The i-th trace node goes to the i-th topology node; node-less events pass unchanged."""
    mapped = map_trace(TRACE, TOPOLOGY, "round-robin")
    assert [event.node for event in mapped] == [
        "s1-a-000",
        "s1-a-001",
        None,
        "s1-a-002",
        "s1-a-000",
    ]
    assert [event.event for event in mapped] == [event.event for event in TRACE]


def test_random_mapping_is_a_seeded_injection() -> None:
    """Random mapping: distinct topology nodes, the same for the same seed, varying by seed."""
    assignments = [
        node_assignment(TRACE, TOPOLOGY, "random", random.Random(seed)) for seed in range(10)
    ]
    for assignment in assignments:
        assert list(assignment) == ["alpha", "beta", "gamma"]
        assert len(set(assignment.values())) == 3
        assert set(assignment.values()) <= set(TOPOLOGY)
    assert assignments[0] == node_assignment(TRACE, TOPOLOGY, "random", random.Random(0))
    assert len({tuple(a.values()) for a in assignments}) > 1
    with pytest.raises(ValueError, match="needs an rng"):
        map_trace(TRACE, TOPOLOGY, "random")


def test_dict_mapping_and_identity() -> None:
    """An explicit dict renames each node; with no mapping the names must already be ids."""
    mapping = {"alpha": "s1-a-003", "beta": "s1-a-000", "gamma": "s1-a-001"}
    mapped = map_trace(TRACE, TOPOLOGY, mapping)
    assert [event.node for event in mapped] == [
        "s1-a-003",
        "s1-a-000",
        None,
        "s1-a-001",
        "s1-a-003",
    ]
    assert map_trace(mapped, TOPOLOGY) == mapped


def test_identity_mapping_rejects_unknown_nodes_at_their_line() -> None:
    """Without a mapping, a trace node missing from the topology is an error at its first line."""
    with fails_at("m.jsonl:1", "unknown node 'alpha' (not in the topology)"):
        map_trace(TRACE, TOPOLOGY)


def test_dict_mapping_errors_name_the_line() -> None:
    """A dict that misses a trace node or maps onto an unknown node fails at that node's line."""
    with fails_at("m.jsonl:4", "trace node 'gamma' is not in the mapping"):
        map_trace(TRACE, TOPOLOGY, {"alpha": "s1-a-000", "beta": "s1-a-001"})
    with fails_at("m.jsonl:2", "'beta' maps to unknown node 's9-z-000'"):
        map_trace(TRACE, TOPOLOGY, {"alpha": "s1-a-000", "beta": "s9-z-000", "gamma": "s1-a-001"})
    folding = {"alpha": "s1-a-000", "beta": "s1-a-000", "gamma": "s1-a-001"}
    with fails_at("m.jsonl:2", "trace nodes 'alpha' and 'beta' both map to 's1-a-000'"):
        map_trace(TRACE, TOPOLOGY, folding)
    assert [e.node for e in map_trace(TRACE, TOPOLOGY, folding, allow_fold=True)][:2] == [
        "s1-a-000",
        "s1-a-000",
    ]


def test_more_trace_nodes_than_topology_needs_allow_fold() -> None:
    """Three trace nodes on two simulator nodes fail at the third's line unless folding."""
    with fails_at("m.jsonl:4", "trace node 'gamma' is node 3 of the trace (3 in all)"):
        map_trace(TRACE, TOPOLOGY[:2], "round-robin")
    folded = map_trace(TRACE, TOPOLOGY[:2], "round-robin", allow_fold=True)
    assert [event.node for event in folded] == [
        "s1-a-000",
        "s1-a-001",
        None,
        "s1-a-000",
        "s1-a-000",
    ]


# --------------------------------------------------------------------------- cut and loop

AVAILABILITY = parse_avt("a 2 10 20 30 40\nb 1 0 100\n", "w.avt")


def test_cut_keeps_the_window_and_shifts_it_to_zero() -> None:
    """cut(15, 35) keeps events in [15, 35), minus 15, after replaying each node's state."""
    window = cut(AVAILABILITY, 15.0, 35.0)
    assert [(e.time_s, e.node, e.event) for e in window] == [
        (0.0, "b", "up"),
        (0.0, "a", "up"),
        (5.0, "a", "down"),
        (15.0, "a", "up"),
    ]
    bare = cut(AVAILABILITY, 15.0, 35.0, carry_state=False)
    assert [(e.time_s, e.node, e.event) for e in bare] == [(5.0, "a", "down"), (15.0, "a", "up")]
    assert cut(AVAILABILITY, 40.0, 100.0, carry_state=False) == [TraceEvent(0.0, "a", "down")]
    with pytest.raises(ValueError, match=re.escape("cut.end_s")):
        cut(AVAILABILITY, 10.0, 10.0)


def test_loop_repeats_the_trace_every_period() -> None:
    """loop(period 50, until 120): copies at 0, 50 and 100, cut at 120."""
    one = cut(AVAILABILITY, 0.0, 50.0, carry_state=False)
    repeated = loop(one, 50.0, 120.0)
    assert [(e.time_s, e.node, e.event) for e in repeated] == [
        (0.0, "b", "up"),
        (10.0, "a", "up"),
        (20.0, "a", "down"),
        (30.0, "a", "up"),
        (40.0, "a", "down"),
        (50.0, "b", "up"),
        (60.0, "a", "up"),
        (70.0, "a", "down"),
        (80.0, "a", "up"),
        (90.0, "a", "down"),
        (100.0, "b", "up"),
        (110.0, "a", "up"),
    ]
    with pytest.raises(
        ValueError, match=re.escape("w.avt:2: event at 100 s is not before period_s")
    ):
        loop(AVAILABILITY, 50.0, 120.0)
