"""A property-based fuzz of every RPC, with requests built from the proto descriptors (tests/fuzz/).

Each RPC of the makima.v1 services gets hypothesis-drawn calls as an owner holding contracts, tasks,
worktrees, checkpoints, messages, events and daemons, beside another owner whose every text carries
a marker. After every call: no INTERNAL/UNKNOWN (see tests/fuzz/oracle.py for the full list), state
unchanged after a failure, nothing of the other owner shown or touched, the server healthy.

The run is seeded (derandomized) and bounded: 25 calls per RPC by default, 500 with
MAKIMA_FUZZ_PROFILE=long. MAKIMA_FUZZ_COLLECT=<file> lists every violation of a run in that file
instead of failing at the first one of each RPC.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator

import pytest
from grpc import aio
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st

from makima.server.app import SERVICE_NAMES, App
from tests.conftest import new_api
from tests.fuzz.oracle import Oracle
from tests.fuzz.pool import Pool
from tests.fuzz.rpcs import Rpc, all_rpcs
from tests.fuzz.strategies import CallPlan, calls
from tests.fuzz.world import populate

PROFILE_ENV = "MAKIMA_FUZZ_PROFILE"
# No shrinking: every call changes the world the next one meets, so a smaller request replayed later
# is not the same experiment; a failure reports the request that failed, as it was sent.
settings.register_profile(
    "makima-fuzz",
    max_examples=25,
    derandomize=True,
    database=None,
    deadline=None,
    phases=(Phase.explicit, Phase.generate),
    suppress_health_check=list(HealthCheck),
)
settings.register_profile("makima-fuzz-long", parent=settings.get_profile("makima-fuzz"), max_examples=500)
LONG = os.environ.get(PROFILE_ENV) == "long"
FUZZ_SETTINGS = settings(settings.get_profile("makima-fuzz-long" if LONG else "makima-fuzz"))
RPCS = all_rpcs()


class Fuzz:
    """The oracle and the strategies of one backend's fuzz (a plain class: hypothesis prints it briefly)."""

    def __init__(self, oracle: Oracle, pool: Pool) -> None:
        self.oracle = oracle
        self.pool = pool
        self.plans: dict[str, st.SearchStrategy[CallPlan]] = {}

    def __repr__(self) -> str:
        return f"Fuzz({self.oracle.backend})"

    def calls(self, rpc: Rpc) -> st.SearchStrategy[CallPlan]:
        if rpc.path not in self.plans:
            self.plans[rpc.path] = calls(rpc, self.pool)
        return self.plans[rpc.path]


@pytest.fixture(scope="module")
async def fuzz(server: App, channel: aio.Channel) -> AsyncIterator[Fuzz]:
    """Two owners' resources on the backend's server, shared by the RPCs' fuzz tests of this module.

    The lease sweeper is paused meanwhile: it is the one writer besides the call under test, and a
    lease it expires between two state reads would look like a partial write.
    """
    await server.sweeper.stop()
    try:
        owner, other = await new_api(server, channel), await new_api(server, channel)
        marker = f"zqfuzz{uuid.uuid4().hex[:10]}"
        pool = Pool(own=await populate(owner), other=await populate(other, marker), own_key=owner.key, marker=marker)
        assert server.runtime.objects is not None
        oracle = Oracle(
            channel=channel,
            db=server.runtime.db,
            workspace=server.settings.workspace_root.resolve(),
            pool=pool,
            owner_id=owner.owner_id,
            other_owner_id=other.owner_id,
            backend=server.runtime.db.dialect,
            settle=server.runtime.objects.settle,
        )
        await oracle.start()
        yield Fuzz(oracle=oracle, pool=pool)
    finally:
        server.sweeper.start()


def test_every_served_service_is_fuzzed() -> None:
    """The descriptors the fuzz enumerates are those of every makima service the server registers."""
    services = {rpc.method.containing_service.full_name: rpc.method.containing_service for rpc in RPCS}
    assert set(services) == set(SERVICE_NAMES)
    assert {rpc.path for rpc in RPCS} == {f"/{s.full_name}/{m.name}" for s in services.values() for m in s.methods}


@pytest.mark.timeout(1800 if LONG else 120)
@pytest.mark.parametrize("rpc", RPCS, ids=[rpc.name for rpc in RPCS])
@FUZZ_SETTINGS
@given(data=st.data())
async def test_rpc_under_hostile_requests(fuzz: Fuzz, rpc: Rpc, data: st.DataObject) -> None:
    plan = data.draw(fuzz.calls(rpc), label=rpc.name)
    code = await fuzz.oracle.check(rpc, plan)
    event(code.name)  # shown by --hypothesis-show-statistics: which answers the fuzz reached
