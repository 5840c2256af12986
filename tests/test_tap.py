"""Which log observer ``twistd wslb`` hands twistd, from twistd's own options."""

import pytest
from twisted.python.reflect import namedAny
from twisted.scripts._twistd_unix import ServerOptions


@pytest.mark.parametrize("twistdArgs, sets, observer", [
    (["-n"], [], "wslb.logs.text_stdout"),  # to stdout: wslb's cheaper text lines
    (["-n", "--logfile=-"], [], "wslb.logs.text_stdout"),
    (["-n", "--logfile=wslb.log"], [], None),  # twistd's file (and its rotation)
    (["-n", "--syslog"], [], None),
    ([], [], None),  # a daemon logs to twistd.log
    (["-n", "--logfile=wslb.log"], ['log.format="json"'], "wslb.logs.json_stdout"),
    (["-n", "--logger=twisted.logger.globalLogPublisher"], ['log.format="json"'],
     "twisted.logger.globalLogPublisher"),  # the operator's choice stands
])
def test_twistd_is_given_wslbs_observer_where_it_would_write_stdout(twistdArgs, sets, observer):
    options = ServerOptions()
    args = [*twistdArgs, "wslb", "--set", "listen.endpoint=tcp:0"]
    for assignment in sets:
        args += ["--set", assignment]
    options.parseOptions(args)
    assert options["logger"] is (observer and namedAny(observer))
