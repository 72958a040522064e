"""A BIOS guest PXE-boots from self-healing agents, also while the responder is kill -9'd.

Lab (tests/e2e/qemu_lab.py): the QEMU guest's tap on a bridge, dnsmasq as the site's plain
DHCP server (addresses only), and three `peerpxe agent` processes (n1 .11, n2 .12, n3 .13,
equal weight, boot enabled, same root) on hosts of their own. The agents find each other by
real mDNS and elect one responder with the default knobs; every agent serves TFTP and HTTP.
The iPXE script chain-loads `marker.0` from `${proxydhcp/next-server}`, the agent whose
ProxyDHCP answer iPXE used. Layout, timeline and measured numbers: docs/e2e.md.

Each test waits until the agents agree on one responder (status files), then boots SeaBIOS
+ iPXE ROM and judges the boot from the serial console (the NBP's marker), the guest's pcap
and the agents' logs.

- steady state: every DISCOVER the guest sends gets exactly one ProxyDHCP offer, from the
  responder, which also serves the script; the NBP comes from the agent the offer names as
  `siaddr` (`spread_file_servers`: another settled agent, or the responder itself).
- failover: at a seeded random moment of the boot (`KILL_WINDOW_S` after QEMU started;
  printed; `PEERPXE_E2E_KILL_AT_S` replays a moment, `PEERPXE_E2E_SEED` a draw) the agent
  that is the responder *then* gets SIGKILL, and a note goes onto the wire so the kill has a
  place in the guest's pcap. The firmware may lose an attempt (offer taken, then its server
  died): SeaBIOS reboots after 1 s and tries again, as a machine set to retry does. The boot
  must reach the NBP, and the attempt that succeeded must have been answered and served by
  survivors: its offer, the script's HTTP GET and the whole `marker.0` all after the kill,
  from live agents (the answerer, and the file server its offer named). DISCOVERs before
  the kill get the steady-state check. It prints the kill moment, kill -> a survivor's
  takeover and kill -> a survivor's first offer to the guest, the attempts and the boot
  time.
"""

from __future__ import annotations

import math
import os
import random
import re
import secrets
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.capture import DHCP_DISCOVER, DHCP_OFFER, Capture, DhcpReply, read_capture
from tests.e2e.qemu_lab import (
    NBP_FILE,
    SCRIPT_FILE,
    SUBNET_PREFIX,
    BootContent,
    Guest,
    Lab,
    PeerpxeAgents,
    build_content,
    send_note,
    skip_reason,
    start_dhcp_server,
    start_guest,
    wait_for,
)

pytestmark = [
    pytest.mark.qemu,
    pytest.mark.timeout(600),
    pytest.mark.skipif(skip_reason("bios") is not None, reason=skip_reason("bios") or ""),
]

AGENT_ADDRESSES = {f"n{number}": f"{SUBNET_PREFIX}.{10 + number}" for number in (1, 2, 3)}
#: when the responder dies, in seconds after QEMU started: from before the guest's first
#: DISCOVER (~4 s under TCG) to well before it fetches the script (~20 s)
KILL_WINDOW_S = (0.0, 12.0)
#: agents start, find each other and elect (startup grace 2 s) in ~3 s; generous
READY_TIMEOUT_S = 60.0
#: one BIOS attempt takes ~20 s under TCG; a lost attempt costs a reboot and another one
MARKER_TIMEOUT_S = 300.0
KILL_NOTE = "PEERPXE-E2E-KILLED-RESPONDER"
#: an agent answers a DISCOVER within milliseconds: a DISCOVER this long before the kill
#: (or before its retransmission) has had every answer it will get
ANSWER_WAIT_S = 0.5
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) ")


@dataclass(frozen=True)
class KillPlan:
    """When to kill, and how to get the same moment again."""

    at_s: float
    origin: str


def kill_plan() -> KillPlan:
    """`PEERPXE_E2E_KILL_AT_S` if set, else a moment drawn uniformly in `KILL_WINDOW_S` from
    `PEERPXE_E2E_SEED` (or a fresh seed, printed)."""
    override = os.environ.get("PEERPXE_E2E_KILL_AT_S")
    if override:
        return KillPlan(float(override), "PEERPXE_E2E_KILL_AT_S")
    seed = int(os.environ.get("PEERPXE_E2E_SEED") or secrets.randbits(32))
    at_s = round(random.Random(seed).uniform(*KILL_WINDOW_S), 2)
    return KillPlan(at_s, f"PEERPXE_E2E_SEED={seed}")


@dataclass(frozen=True)
class Kill:
    """The responder that was killed, and when (host clocks)."""

    victim: str
    after_guest_start_s: float
    wall_s: float


@dataclass
class AgentsBoot:
    """One finished boot from the agents: console, wire, agents, and the kill if any."""

    guest: Guest
    content: BootContent
    agents: PeerpxeAgents
    #: the responder the agents agreed on when the guest started, and its first standby
    responder: str
    first_standby: str | None
    capture: Capture
    marker_s: float | None
    kill: Kill | None = None

    def address_of(self, node_id: str) -> str:
        return self.agents.addresses[node_id]

    def survivors(self) -> dict[str, str]:
        """Address -> node id of the agents that were not killed."""
        victim = self.kill.victim if self.kill is not None else None
        return {address: node for node, address in self.agents.addresses.items()
                if node != victim}  # fmt: skip

    def kill_on_wire_s(self) -> float:
        """When the kill note crossed the guest's NIC (pcap clock); +inf without a kill."""
        if self.kill is None:
            return math.inf
        found = self.capture.note_time_s(KILL_NOTE)
        assert found is not None, "the kill note is not in the guest's pcap" + self.explain()
        return found

    def proxy_offers(self) -> list[DhcpReply]:
        """ProxyDHCP offers on 67 from any agent (an offer with an address is dnsmasq's)."""
        return [reply for reply in self.capture.dhcp_replies
                if reply.source in self.agents.addresses.values()
                and reply.message_type == DHCP_OFFER and reply.yiaddr == "0.0.0.0"]  # fmt: skip

    def attempts(self) -> int:
        """Boot attempts: SeaBIOS prints its banner once per (re)boot."""
        return self.guest.serial().count("SeaBIOS (version")

    def explain(self) -> str:
        serial = self.guest.serial().replace("\r", "")[-3000:]
        return (
            f"\nresponder at guest start: {self.responder} (first standby "
            f"{self.first_standby}); kill: {self.kill}\n"
            f"--- serial console (tail)\n{serial}\n--- wire, in order\n{wire_timeline(self)}"
            f"{self.agents.logs()}"
        )


def wire_timeline(result: AgentsBoot) -> str:
    """The boot exchange on the guest's NIC, one line per item, in pcap time order."""
    capture = result.capture
    lines = [(r.time_s, f"guest DHCP type {r.message_type} xid={r.xid:08x} secs={r.secs}")
             for r in capture.dhcp_requests]  # fmt: skip
    lines += [(r.time_s, f"DHCP type {r.message_type} from {r.source}:{r.source_port} "
               f"xid={r.xid:08x} file={r.file!r}") for r in capture.dhcp_replies]  # fmt: skip
    lines += [(n.time_s, f"note {n.text}") for n in capture.notes]
    lines += [(h.time_s, f"HTTP to {h.server}: {h.line}") for h in capture.http_requests]
    lines += [(t.started_s, f"TFTP from {t.server}: {t.filename} {t.bytes_received} bytes")
              for t in capture.tftp]  # fmt: skip
    if not lines:
        return "(nothing)"
    first_s = min(at_s for at_s, _ in lines)
    return "\n".join(f"{at_s - first_s:8.3f} {text}" for at_s, text in sorted(lines))


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    made = Lab(tmp_path, with_pxe_host=False)
    try:
        yield made
    finally:
        made.close()


def start_agents(lab: Lab) -> tuple[BootContent, PeerpxeAgents]:
    """dnsmasq and three agents; returns once the agents agree on one responder."""
    content = build_content(lab.workdir)
    start_dhcp_server(lab)
    agents = PeerpxeAgents(AGENT_ADDRESSES)
    agents.start(lab, content)
    if wait_for(lambda: agents.ready(lab), READY_TIMEOUT_S) is None:
        pytest.fail(f"the agents did not serve and agree on one responder within "
                    f"{READY_TIMEOUT_S:.0f} s{agents.logs()}")  # fmt: skip
    return content, agents


def current_responder(agents: PeerpxeAgents) -> str:
    """The responder the running agents agree on now (a status file may be mid-rewrite)."""
    wait_for(lambda: agents.responder() is not None, 5.0)
    found = agents.responder()
    assert found is not None, "the agents agree on no responder" + agents.logs()
    return found


def kill_responder_at(lab: Lab, agents: PeerpxeAgents, started_s: float, at_s: float) -> Kill:
    """At `at_s` after `started_s`, SIGKILL the agent that is the responder then."""
    time.sleep(max(0.0, started_s + at_s - time.monotonic()))
    victim = current_responder(agents)
    process = agents.agents[victim].process
    os.kill(process.pid, signal.SIGKILL)
    kill = Kill(victim, time.monotonic() - started_s, time.time())
    process.wait()
    send_note(lab, KILL_NOTE)
    return kill


def boot(lab: Lab, plan: KillPlan | None) -> AgentsBoot:
    """Start dnsmasq and the agents, boot the BIOS guest (retrying when there is a kill),
    kill the responder as `plan` says, wait for the NBP's marker, stop the VM."""
    content, agents = start_agents(lab)
    responder = current_responder(agents)
    first_standby = agents.first_standby()
    if plan is not None:
        print(f"\nkill at {plan.at_s:.2f} s after the guest starts ({plan.origin}; "
              f"PEERPXE_E2E_KILL_AT_S={plan.at_s:.2f} replays it)")  # fmt: skip
    guest = start_guest(lab, "bios", retry_boot=plan is not None)
    started_s = time.monotonic()
    kill = None if plan is None else kill_responder_at(lab, agents, started_s, plan.at_s)
    left_s = MARKER_TIMEOUT_S - (time.monotonic() - started_s)
    waited_s = guest.wait_for(content.nbp_marker, left_s)
    marker_s = None if waited_s is None else time.monotonic() - started_s
    guest.stop()
    capture = read_capture(guest.capture, guest.mac)
    return AgentsBoot(guest, content, agents, responder, first_standby, capture, marker_s, kill)


# --------------------------------------------------------------------------- agents' logs


def log_times(log: str, pattern: str) -> list[float]:
    """Wall-clock times (time.time() scale) of the log lines matching `pattern`."""
    times: list[float] = []
    for line in log.splitlines():
        stamp = LOG_TIME.match(line)
        if stamp is not None and re.search(pattern, line):
            whole_s = time.mktime(time.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S"))
            times.append(whole_s + int(stamp.group(2)) / 1000)
    return times


def first_after_kill(result: AgentsBoot, kill: Kill, pattern: str) -> tuple[str, float] | None:
    """(node, seconds after the kill) of the survivors' first log line matching `pattern`."""
    found = [(at_s - kill.wall_s, node)
             for node in result.survivors().values()
             for at_s in log_times(result.agents.agents[node].log(), pattern)
             if at_s >= kill.wall_s - 0.001]  # fmt: skip
    if not found:
        return None
    after_s, node = min(found)
    return node, after_s


# --------------------------------------------------------------------------- checks


@dataclass(frozen=True)
class Served:
    """Who booted the guest: the agent that answered ProxyDHCP (and served the iPXE script)
    and the agent its answer named as TFTP server (`siaddr`, `${next-server}`)."""

    answerer: str
    file_server: str
    offered_s: float


def assert_booted_by_agents(result: AgentsBoot) -> Served:
    """The complete `marker.0` transfer came from the `siaddr` of the ProxyDHCP offer of the
    last DHCP session before the script GET, and that script came from the offer's sender.
    (One answerer, many servers: the answerer may name another eligible agent as the
    file server, `spread_file_servers`.)"""
    assert result.marker_s is not None, "the NBP's marker never reached COM1" + result.explain()
    size = (result.content.root / NBP_FILE).stat().st_size
    complete = [transfer for transfer in result.capture.tftp
                if transfer.filename == NBP_FILE and transfer.bytes_received == size]  # fmt: skip
    assert complete, f"no complete TFTP transfer of {NBP_FILE}" + result.explain()
    file_server, nbp_s = complete[-1].server, complete[-1].started_s
    script_get = f"GET /{SCRIPT_FILE} "
    scripts = [request for request in result.capture.http_requests
               if request.line.startswith(script_get) and request.time_s < nbp_s]  # fmt: skip
    assert scripts, "no script GET before the NBP transfer" + result.explain()
    answerer = scripts[-1].server
    sessions = [request.xid for request in result.capture.dhcp_requests
                if request.message_type == DHCP_DISCOVER
                and request.time_s < scripts[-1].time_s]  # fmt: skip
    assert sessions, "no DISCOVER before the script GET" + result.explain()
    offers = [offer for offer in result.proxy_offers()
              if offer.xid == sessions[-1] and offer.source == answerer]  # fmt: skip
    assert offers, f"no ProxyDHCP offer from {answerer} in the last DHCP session" + result.explain()
    assert offers[0].siaddr == file_server, (
        f"the NBP came from {file_server}, but the offer named {offers[0].siaddr}"
        + result.explain()
    )
    return Served(answerer, file_server, offers[0].time_s)


def assert_served_by_a_survivor(result: AgentsBoot, kill: Kill) -> str:
    """The successful attempt was answered and served by survivors, all after the kill.
    Returns the answering survivor's node id."""
    killed_s = result.kill_on_wire_s()
    served = assert_booted_by_agents(result)
    assert served.offered_s > killed_s, (
        f"the offer of the successful attempt came from {served.answerer} before the kill: "
        "nothing failed over (kill too late for this machine's boot? lower "
        "PEERPXE_E2E_KILL_AT_S)" + result.explain()
    )
    survivors = result.survivors()
    for role, address in (("answered by", served.answerer), ("served by", served.file_server)):
        assert address in survivors, f"{role} the killed {address}" + result.explain()
    node = survivors[served.answerer]
    answered = rf"proxy answer mac={re.escape(result.guest.mac)} "
    assert re.search(answered, result.agents.agents[node].log()), result.explain()
    assert kill.victim == result.responder, "the responder changed before the kill"
    return node


def assert_victim_silent_after_kill(result: AgentsBoot, kill: Kill) -> None:
    """A dead agent sends nothing (checks the lab: the kill really took the responder)."""
    killed_s = result.kill_on_wire_s()
    victim = result.address_of(kill.victim)
    late = [offer for offer in result.proxy_offers()
            if offer.source == victim and offer.time_s > killed_s]  # fmt: skip
    assert not late, f"offers from the killed agent: {late}" + result.explain()


def answers_before_kill(result: AgentsBoot) -> list[tuple[int, list[str]]]:
    """For each DISCOVER the guest sent at least `ANSWER_WAIT_S` before the kill (all, without
    one): its `secs` and the agents (addresses) that sent it a ProxyDHCP offer before the
    next DISCOVER (iPXE reuses its xid for retransmissions) or the kill."""
    killed_s = result.kill_on_wire_s()
    discovers = [request for request in result.capture.dhcp_requests
                 if request.message_type == DHCP_DISCOVER]  # fmt: skip
    ends_s = [min(request.time_s, killed_s) for request in discovers[1:]]
    ends_s.append(min(killed_s, discovers[-1].time_s + 60.0) if discovers else killed_s)
    windows: list[tuple[int, list[str]]] = []
    for discover, end_s in zip(discovers, ends_s, strict=True):
        if end_s - discover.time_s < ANSWER_WAIT_S:
            continue
        sources = [offer.source for offer in result.proxy_offers()
                   if offer.xid == discover.xid
                   and discover.time_s <= offer.time_s < end_s]  # fmt: skip
        windows.append((discover.secs, sources))
    return windows


def assert_one_answer_per_discover(
    result: AgentsBoot, windows: list[tuple[int, list[str]]]
) -> None:
    """Exactly one responder per subnet: each DISCOVER got one offer, the responder's."""
    responder = result.address_of(result.responder)
    for secs, sources in windows:
        assert sources == [responder], (
            f"a DISCOVER (secs={secs}) got ProxyDHCP offers from {sources}; expected one, "
            f"from the responder {responder}" + result.explain()
        )


def assert_only_responder_and_first_standby_answered(
    result: AgentsBoot, windows: list[tuple[int, list[str]]]
) -> None:
    """The design's contract (docs/agent-config.md, `answer_retries_as_standby`): the
    responder answers every DISCOVER; the first standby may add an answer to a client's
    retry; nobody else answers, and nobody twice."""
    responder = result.address_of(result.responder)
    allowed = {responder}
    if result.first_standby is not None:
        allowed.add(result.address_of(result.first_standby))
    for secs, sources in windows:
        assert responder in sources, f"the responder missed a DISCOVER (secs={secs})"
        assert set(sources) <= allowed, (
            f"a DISCOVER (secs={secs}) got offers from {sources}; only {sorted(allowed)} may "
            "answer" + result.explain()
        )
        assert len(sources) == len(set(sources)), f"an agent answered twice: {sources}"


def report(result: AgentsBoot, kill: Kill, survivor: str, steady_discovers: int) -> str:
    killed_s = result.kill_on_wire_s()
    takeover = first_after_kill(result, kill, r"answering ProxyDHCP ")
    answer = first_after_kill(result, kill, rf"proxy answer mac={re.escape(result.guest.mac)} ")
    wire = [offer.time_s - killed_s for offer in result.proxy_offers()
            if offer.source in result.survivors() and offer.time_s > killed_s]  # fmt: skip
    takeover_text = "none" if takeover is None else f"{takeover[0]} after {takeover[1]:.2f} s"
    answer_text = "none" if answer is None else f"{answer[0]} after {answer[1]:.2f} s"
    wire_text = f"{min(wire):.2f} s" if wire else "none"
    marker_text = "never" if result.marker_s is None else f"{result.marker_s:.1f} s"
    return (
        f"killed responder {kill.victim} at {kill.after_guest_start_s:.2f} s; takeover (log): "
        f"{takeover_text}; first offer to the guest from a survivor: log {answer_text}, wire "
        f"{wire_text}; booted from {survivor}; attempts {result.attempts()}; NBP marker at "
        f"{marker_text}; DISCOVERs before the kill: {steady_discovers}"
    )


# --------------------------------------------------------------------------- the tests


def test_bios_boot_from_three_agents_gets_one_offer_per_discover(lab: Lab) -> None:
    """No failure: the responder answers, each DISCOVER gets exactly one ProxyDHCP offer,
    the responder's (the standbys stay silent), and the NBP comes from the agent it named."""
    result = boot(lab, plan=None)
    served = assert_booted_by_agents(result)
    server = served.answerer
    windows = answers_before_kill(result)
    offers = [len(sources) for _, sources in windows]
    print(f"\nresponder {result.responder}; answered by {result.agents.node_at(server)}, NBP "
          f"from {result.agents.node_at(served.file_server)} in {result.marker_s:.1f} s; "
          f"offers per DISCOVER {offers}")  # fmt: skip
    assert windows, "the guest sent no DISCOVER" + result.explain()
    assert_one_answer_per_discover(result, windows)
    assert server == result.address_of(result.responder), result.explain()


def test_bios_boot_survives_kill_9_of_the_responder(lab: Lab) -> None:
    """SeaBIOS + iPXE boots to the marker NBP although the responder died mid-boot; the
    successful attempt was answered and served by a survivor."""
    result = boot(lab, kill_plan())
    kill = result.kill
    assert kill is not None
    assert_victim_silent_after_kill(result, kill)
    survivor = assert_served_by_a_survivor(result, kill)
    windows = answers_before_kill(result)
    print(report(result, kill, survivor, len(windows)))
    assert_only_responder_and_first_standby_answered(result, windows)
