"""The group tests of tests/test_groups.py, over XMTP: four agents, each with its own Node sidecar (its own XMTP
client and MLS state), through the devnet."""

from __future__ import annotations

import pytest

from coworker import Network
from coworker.devnet import DevnetServer
from coworker.transports.xmtp.transport import XmtpNetwork

from .test_groups import (  # noqa: F401  (collected here again, on XMTP)
    four,
    test_a_group_call_is_an_ordinary_task_over_the_pairs_dm,
    test_a_member_that_leaves_is_gone_at_once,
    test_a_member_that_no_longer_trusts_the_asker_answers_with_no_skills,
    test_a_post_from_a_non_member_or_a_forged_sender_is_dropped_with_the_reason,
    test_a_removed_member_receives_nothing_posted_after_and_cannot_be_called,
    test_an_invitation_from_a_stranger_is_ignored_and_nothing_in_that_group_is_read,
    test_discover_from_a_group_shows_each_members_skills_as_its_trust_of_the_asker_allows,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def group_network(xmtp_node: DevnetServer) -> Network:
    return XmtpNetwork("local", sync_interval=0)
