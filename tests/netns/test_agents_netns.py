"""Real agents in network namespaces: mDNS discovery, crash detection, wrong-key intruders.

Layout: a bridge (in its own namespace) joins host namespace A (10.231.7.1, two agents on
ports 7947 and 7948) and host namespace B (10.231.7.2, one agent). The agents use mDNS only
(no seeds) and the default discovery knobs, so the bounds shown are the real ones:
probe 1 s, probe timeout 0.5 s, suspicion 2-12 s.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.netns.netlab import AgentProcess, NetLab, skip_reason

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or ""),
]

ADDRESS_A = "10.231.7.1"
ADDRESS_B = "10.231.7.2"


def agent_config(node_id: str, address: str, port: int) -> str:
    return (
        f'[agent]\nnode_id = "{node_id}"\nsite = "lab"\nsubnet = "10.231.7.0/24"\n'
        f'interface = "eth0"\naddress = "{address}"\nport = {port}\n'
        "[discovery]\nmdns = true\n"
    )


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[NetLab]:
    made = NetLab(tmp_path)
    try:
        yield made
    finally:
        made.close()


def start_three(lab: NetLab) -> tuple[list[AgentProcess], float | None]:
    """Start n1, n2 (namespace A) and n3 (namespace B); seconds until all saw all alive."""
    namespace_a = lab.add_host("a", f"{ADDRESS_A}/24")
    namespace_b = lab.add_host("b", f"{ADDRESS_B}/24")
    agents = [
        lab.start_agent(namespace_a, "n1", agent_config("n1", ADDRESS_A, 7947)),
        lab.start_agent(namespace_a, "n2", agent_config("n2", ADDRESS_A, 7948)),
        lab.start_agent(namespace_b, "n3", agent_config("n3", ADDRESS_B, 7947)),
    ]
    names = {agent.node_id for agent in agents}

    def all_alive() -> bool:
        return all(
            agent.states() == dict.fromkeys(names - {agent.node_id}, "alive") for agent in agents
        )

    # Wait for the processes to be up (imports, bind) before timing discovery itself.
    up = lab.wait_for(lambda: all(agent.status() for agent in agents), timeout_s=20.0)
    assert up is not None, lab.logs()
    return agents, lab.wait_for(all_alive, timeout_s=15.0)


def test_agents_discover_each_other_by_mdns_and_detect_kill_9(lab: NetLab) -> None:
    """All three find each other by mDNS within 5 s; a kill -9 is declared dead within 15 s."""
    agents, discovered_s = start_three(lab)
    assert discovered_s is not None, lab.logs()
    assert discovered_s <= 5.0, f"discovery took {discovered_s:.1f} s\n{lab.logs()}"
    victim, survivors = agents[2], agents[:2]
    victim.process.kill()
    victim.process.wait()
    dead_s = lab.wait_for(
        lambda: all(agent.states().get(victim.node_id) == "dead" for agent in survivors),
        timeout_s=20.0,
    )
    assert dead_s is not None, lab.logs()
    assert dead_s <= 15.0, f"crash detection took {dead_s:.1f} s\n{lab.logs()}"
    for agent in survivors:
        assert agent.states()[survivors[0 if agent is survivors[1] else 1].node_id] == "alive"


def test_clean_stop_is_seen_as_left_and_exits_zero(lab: NetLab) -> None:
    """SIGTERM makes an agent leave (others see LEFT), say goodbye and exit 0."""
    agents, discovered_s = start_three(lab)
    assert discovered_s is not None, lab.logs()
    leaver = agents[1]
    leaver.process.terminate()
    assert leaver.process.wait(timeout=10) == 0, leaver.log()
    assert leaver.status()["running"] is False
    left_s = lab.wait_for(
        lambda: all(agent.states().get("n2") == "left" for agent in (agents[0], agents[2])),
        timeout_s=5.0,
    )
    assert left_s is not None, lab.logs()


def test_agent_with_wrong_key_is_never_admitted(lab: NetLab) -> None:
    """An agent without the cluster key is dropped (bad_mac) and never listed as alive."""
    agents, discovered_s = start_three(lab)
    assert discovered_s is not None, lab.logs()
    intruder = lab.start_agent(
        lab.namespaces[2], "mallory", agent_config("mallory", ADDRESS_B, 7949), key_hex="ab" * 32
    )
    ever_alive: set[str] = set()
    deadline = time.monotonic() + 6.0
    while time.monotonic() < deadline:
        ever_alive |= {a.node_id for a in agents if a.states().get("mallory") == "alive"}
        time.sleep(0.1)
    assert intruder.process.poll() is None, intruder.log()
    assert ever_alive == set(), f"mallory admitted by {sorted(ever_alive)}\n{lab.logs()}"
    dropped = sum(agent.status()["counters"].get("dropped.bad_mac", 0) for agent in agents)
    assert dropped >= 1, lab.logs()
    assert all(state != "alive" for state in intruder.states().values()), intruder.log()
