"""The scaler's policy, driven by task.Clock against the real MemoryRegistry."""

from _pool_helpers import RecordingProvider, SwitchableLeader, resultOf
from twisted.internet.task import Clock
from twisted.logger import Logger
from zope.interface.verify import verifyObject

from wslb.pool._interfaces import ILeader, IProvider
from wslb.pool.leader import AlwaysLeader
from wslb.pool.scaler import Scaler
from wslb.pool.static import StaticProvider
from wslb.registry import (
    DEAD,
    HEALTHY,
    STARTING,
    Assigned,
    AssignRequest,
    Queued,
)
from wslb.registry.memory import MemoryRegistry


class Pool:
    """A scaler, its registry and provider on one Clock, with shortcuts."""

    def __init__(self, provider=None, leader=None, log=None, **policy):
        self.clock = Clock()
        self.clock.advance(1000)
        self.registry = MemoryRegistry(self.clock)
        self.provider = provider or RecordingProvider()
        self.leader = leader or AlwaysLeader()
        settings = {"min_spare": 2, "max_spare": 4, "min_workers": 0, "max_workers": 20,
                    "capacity": 1, **policy}
        self.scaler = Scaler(self.registry, self.provider, self.clock, self.leader,
                             log=log, **settings)
        self._users = 0

    def tick(self):
        resultOf(self.scaler.tick())
        self.clock.advance(0)  # deliver registry listener calls

    def workers(self):
        return {w.id: w for w in resultOf(self.registry.listWorkers())}

    def states(self):
        return {w.id: w.state for w in self.workers().values()}

    def healthy(self, *ids):
        for worker_id in ids or [w for w, s in self.states().items() if s == STARTING]:
            resultOf(self.registry.setWorkerState(worker_id, HEALTHY, self.clock.seconds()))

    def user(self, cost=1):
        """A new session: assigned (its worker is busy now) or queued."""
        self._users += 1
        request = AssignRequest(f"user{self._users}", cost, "instance-1")
        return resultOf(self.registry.assign(request, self.clock.seconds()))

    def idle(self):
        return sorted(w.id for w in self.workers().values() if w.assignable and w.load == 0)


def test_interfaces():
    verifyObject(ILeader, AlwaysLeader())
    verifyObject(IProvider, StaticProvider(["ws://10.0.0.1:9000"]))


def test_starts_with_min_spare_and_counts_starting_ones():
    pool = Pool(min_spare=2)
    pool.tick()
    assert pool.provider.launches == [2]
    assert pool.states() == {"w01": STARTING, "w02": STARTING}
    pool.tick()  # still starting: they count as spare
    assert pool.provider.launches == [2]
    assert pool.workers()["w01"].capacity == 1 and pool.workers()["w01"].provider == "local"


def test_launches_as_users_take_workers():
    pool = Pool(min_spare=2, max_spare=4)
    pool.tick()
    pool.healthy()
    pool.tick()
    assert pool.provider.launches == [2]
    assert isinstance(pool.user(), Assigned)
    pool.tick()
    assert pool.provider.launches == [2, 1]
    pool.healthy()
    for _ in range(2):
        assert isinstance(pool.user(), Assigned)
    pool.tick()
    assert pool.provider.launches == [2, 1, 2]
    assert len(pool.idle()) == 0 and len(pool.workers()) == 5


def test_terminates_idle_above_max_spare_longest_idle_first_never_loaded():
    pool = Pool(min_spare=0, max_spare=1)
    launched = resultOf(pool.provider.launch(5))
    pool.tick()  # adopts all five
    assert sorted(pool.workers()) == [w.id for w in launched]
    pool.healthy()
    # Load every worker, then free them one by one at distinct times, in the
    # order w03, w01, w05, w02; w04 keeps its user.
    keys = {}
    for _ in range(5):
        assigned = pool.user()
        keys[assigned.worker.id] = f"user{pool._users}"
    for worker_id in ["w03", "w01", "w05", "w02"]:
        pool.clock.advance(10)
        resultOf(pool.registry.endSession(keys[worker_id]))
    pool.tick()
    # Four idle, max_spare 1: the three idle longest go, w02 stays, w04 is loaded.
    assert pool.provider.terminations == [["w03", "w01", "w05"]]
    assert sorted(pool.workers()) == ["w02", "w04"]
    assert sorted(pool.provider.running) == ["w02", "w04"]
    pool.tick()
    assert pool.provider.terminations == [["w03", "w01", "w05"]]


def test_a_worker_that_got_a_session_meanwhile_is_not_terminated():
    pool = Pool(min_spare=0, max_spare=0)
    resultOf(pool.provider.launch(1))
    pool.tick()
    pool.healthy()
    # The scaler plans from a snapshot; the claim must see the fresh load.
    original = pool.registry.claimIdleWorker

    def assignFirst(worker_id):
        pool.user()
        return original(worker_id)

    pool.registry.claimIdleWorker = assignFirst
    pool.tick()
    assert pool.provider.terminations == []
    assert pool.workers()["w01"].load == 1


def test_replaces_a_dead_worker():
    pool = Pool(min_spare=2)
    pool.tick()
    pool.healthy()
    pool.provider.die("w01")
    pool.clock.advance(0)
    assert pool.states()["w01"] == DEAD  # at once, before any tick
    pool.tick()
    assert pool.provider.terminations == [["w01"]]
    assert pool.provider.launches == [2, 1]
    assert pool.states() == {"w02": HEALTHY, "w03": STARTING}


def test_dead_by_health_is_terminated_removed_and_replaced():
    pool = Pool(min_spare=0, min_workers=2)
    pool.tick()
    pool.healthy()
    assert isinstance(pool.user(), Assigned)  # on w01
    resultOf(pool.registry.setWorkerState("w01", DEAD, pool.clock.seconds()))
    assert resultOf(pool.registry.listSessions()) == []  # its user gets a fresh worker
    pool.tick()
    assert pool.provider.terminations == [["w01"]]
    assert "w01" not in pool.workers() and "w01" not in pool.provider.running
    assert pool.provider.launches == [2, 1]
    assert pool.states() == {"w02": HEALTHY, "w03": STARTING}


def test_never_exceeds_max_workers():
    pool = Pool(min_spare=5, max_workers=3)
    pool.tick()
    assert pool.provider.launches == [3]
    pool.healthy()
    for _ in range(3):
        assert isinstance(pool.user(), Assigned)
    assert isinstance(pool.user(), Queued)
    pool.tick()
    assert pool.provider.launches == [3]
    assert len(pool.workers()) == 3


def test_lowered_max_workers_sheds_idle_ones_only():
    pool = Pool(min_spare=0, max_spare=10, max_workers=2)
    resultOf(pool.provider.launch(4))
    pool.tick()
    pool.healthy()
    assert isinstance(pool.user(), Assigned)  # PACK ties by id: w01
    pool.tick()
    assert pool.provider.terminations == [["w02", "w03"]]
    assert sorted(pool.workers()) == ["w01", "w04"]


def test_queued_demand_launches_more():
    pool = Pool(min_spare=1, max_spare=1, capacity=2)
    pool.tick()
    pool.healthy()
    assert isinstance(pool.user(cost=2), Assigned)
    for _ in range(3):
        assert isinstance(pool.user(cost=2), Queued)
    info = resultOf(pool.registry.queueInfo(pool.clock.seconds()))
    assert info.demand == 6
    pool.tick()
    # min_spare 1 + ceil(6 / 2) queued workers - 0 idle - 0 starting
    assert pool.provider.launches == [1, 4]


def test_queued_demand_counts_costs_not_heads():
    """A queued 1000-cost session needs a whole worker; small ones share one."""
    pool = Pool(min_spare=0, max_spare=0, capacity=1000)
    resultOf(pool.provider.launch(1))
    pool.tick()
    pool.healthy()
    assert isinstance(pool.user(cost=1000), Assigned)
    for cost in (1000, 600, 300, 100):  # 2000 queued: two workers, not four or one
        assert isinstance(pool.user(cost=cost), Queued)
    pool.tick()
    assert pool.provider.launches == [1, 2]
    pool.healthy()
    pool.tick()  # two idle workers now stand for the queued 2000: no more
    assert pool.provider.launches == [1, 2]


def test_queued_users_keep_idle_workers():
    pool = Pool(min_spare=0, max_spare=0, capacity=2)
    resultOf(pool.provider.launch(1))
    pool.tick()
    pool.healthy()
    assert isinstance(pool.user(cost=3), Queued)  # fits nowhere: queued, w01 idle
    pool.tick()
    assert pool.provider.terminations == []
    assert pool.provider.launches[-1] == 1  # ceil(3 / 2) = 2 wanted, 1 idle


def test_respects_min_workers():
    pool = Pool(min_spare=1, max_spare=0, min_workers=3)
    pool.tick()
    assert pool.provider.launches == [3]
    pool.healthy()
    pool.tick()
    assert pool.provider.terminations == []
    assert len(pool.workers()) == 3


def test_empty_draining_workers_are_terminated_and_replaced():
    pool = Pool(min_spare=2, max_spare=4)
    pool.tick()
    pool.healthy()
    resultOf(pool.registry.setDraining("w01", True))
    assert isinstance(pool.user(), Assigned)  # goes to w02: w01 drains
    resultOf(pool.registry.setDraining("w02", True))
    pool.tick()
    assert pool.provider.terminations == [["w01"]]  # w02 still has its user
    assert pool.provider.launches == [2, 2]
    assert sorted(pool.workers()) == ["w02", "w03", "w04"]


def test_reconcile_adopts_orphans_and_marks_lost_ones_dead():
    pool = Pool(min_spare=0, max_spare=5)
    resultOf(pool.registry.addWorker("w99", "ws://127.0.0.1:9099", "local", 1, 0))
    resultOf(pool.registry.addWorker("10.0.0.1:9000", "ws://10.0.0.1:9000", "registered", 1, 0))
    resultOf(pool.provider.launch(1))
    pool.tick()
    workers = pool.workers()
    assert workers["w01"].state == STARTING  # adopted
    assert "w99" not in workers  # lost: dead, then terminated and removed
    assert ["w99"] in pool.provider.terminations
    assert workers["10.0.0.1:9000"].state == STARTING  # not the provider's: left alone
    actions = [(a.action, a.workers) for a in pool.scaler.recentActions]
    assert actions == [("adopt", ("w01",)), ("lost", ("w99",)), ("terminate", ("w99",))]


def test_a_tick_reads_the_fleet_once_and_plans_with_what_reconciling_changed():
    pool = Pool(min_spare=3, max_spare=5)
    resultOf(pool.registry.addWorker("w99", "ws://127.0.0.1:9099", "local", 1, 0))
    resultOf(pool.provider.launch(2))  # the registry lacks them: adopted, starting
    reads = []
    listWorkers = pool.registry.listWorkers
    pool.registry.listWorkers = lambda **kw: reads.append(kw) or listWorkers(**kw)
    pool.tick()
    assert reads == [{"sessions": False}]
    # the two adopted ones count as starting and w99 (lost) as dead: one launch more
    assert pool.provider.launches == [2, 1]
    assert ["w99"] in pool.provider.terminations


def test_static_workers_are_adopted_never_removed():
    provider = StaticProvider(["ws://10.0.0.1:9000", "ws://10.0.0.2:9000/"])
    pool = Pool(provider=provider, min_spare=5, min_workers=5)
    pool.tick()
    assert pool.states() == {"10.0.0.1:9000": STARTING, "10.0.0.2:9000": STARTING}
    resultOf(pool.registry.setWorkerState("10.0.0.1:9000", DEAD, pool.clock.seconds()))
    pool.tick()
    assert pool.states()["10.0.0.1:9000"] == DEAD
    assert len(pool.workers()) == 2


def test_static_workers_dropped_from_the_config_are_removed():
    pool = Pool(provider=StaticProvider(["ws://10.0.0.1:9000", "ws://10.0.0.2:9000"]))
    pool.tick()
    resultOf(pool.registry.setWorkerState("10.0.0.2:9000", DEAD, pool.clock.seconds()))
    # Restarted with one URL less, on the same (shared) registry.
    restarted = Scaler(pool.registry, StaticProvider(["ws://10.0.0.1:9000"]), pool.clock,
                       pool.leader, 2, 4, 0, 20, 1)
    resultOf(restarted.tick())
    assert pool.states() == {"10.0.0.1:9000": STARTING}
    assert [(a.action, a.workers) for a in restarted.recentActions] == [
        ("lost", ("10.0.0.2:9000",))]


def test_no_launch_or_terminate_without_leadership():
    leader = SwitchableLeader()
    pool = Pool(leader=leader, min_spare=2)
    leader.leading = False
    pool.tick()
    assert pool.provider.launches == []
    leader.leading = True
    pool.tick()
    assert pool.provider.launches == [2]
    pool.provider.die("w01")
    leader.leading = False
    pool.tick()
    assert pool.provider.terminations == [] and pool.states()["w01"] == DEAD


def test_actions_are_recorded_and_logged_with_fencing_token():
    events = []
    pool = Pool(leader=SwitchableLeader(), log=Logger(observer=events.append), min_spare=2)
    pool.clock.advance(5)
    pool.tick()
    [action] = pool.scaler.recentActions
    assert (action.time, action.action, action.workers, action.fencing_token) == (
        1005, "launch", ("w01", "w02"), 7)
    [event] = [e for e in events if e.get("action") == "launch"]
    assert event["workers"] == ["w01", "w02"] and event["fencing_token"] == 7
    assert pool.scaler.actionCounts["launch"] == 2


def test_a_failing_launch_is_logged_and_the_tick_goes_on():
    events = []

    class Broken(RecordingProvider):
        def launch(self, n):
            raise RuntimeError("no capacity")

    provider = Broken()
    pool = Pool(provider=provider, log=Logger(observer=events.append), min_spare=0)
    resultOf(pool.registry.addWorker("w99", "ws://127.0.0.1:9099", "local", 1, 0))
    pool.scaler._minSpare = 1  # now it wants a launch, and w99 (lost) must still go
    pool.tick()
    assert [str(e["log_failure"].value) for e in events if "log_failure" in e] == ["no capacity"]
    assert provider.terminations == [["w99"]]
    assert "w99" not in pool.workers()
