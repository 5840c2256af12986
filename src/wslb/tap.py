"""twistd's adapter: ``twistd wslb [--config FILE] [--set KEY=VALUE ...]``."""

import sys

from twisted.python import usage

from wslb.config import ConfigError, load_config


class Options(usage.Options):
    synopsis = "[--config FILE] [--set section.key=value ...]"
    optParameters = [
        ["config", "c", None, "TOML configuration file (default: the embedded default)"],
    ]

    def __init__(self):
        super().__init__()
        self["set"] = []

    def opt_set(self, assignment):
        """Override one configuration key, e.g. --set listen.endpoint=tcp:9000"""
        self["set"].append(assignment)

    def postOptions(self):
        _installReactor()  # before anything imports the default one
        try:
            self.config = load_config(self["config"], overrides=self["set"])
        except ConfigError as e:
            raise usage.UsageError("invalid configuration:\n" + str(e)) from None
        twistd = self.parent
        if twistd is not None and not twistd.get("logger"):
            # twistd picks its log observer from its own options once they
            # are parsed: setting it here is how a subcommand chooses it.
            # Text lines replace twistd's own only where those go (stdout).
            toStdout = twistd.get("logfile") in (None, "", "-") and twistd.get("nodaemon")
            if self.config.log.format == "json":
                twistd["logger"] = "wslb.logs.json_stdout"
            elif toStdout and not twistd.get("syslog"):
                twistd["logger"] = "wslb.logs.text_stdout"


def _installReactor():
    """
    wslb's epoll reactor (wslb.reactor), unless one is installed already:
    twistd's ``--reactor`` installs its choice while parsing its own options,
    before a subcommand's. Where there is no epoll, Twisted's default stays.
    """
    if "twisted.internet.reactor" in sys.modules:
        return
    try:
        from wslb.reactor import install
    except (ImportError, AttributeError):  # no epoll on this platform
        return
    install()


def makeService(options):
    from twisted.internet import reactor

    from wslb.service import makeService
    from wslb.stopsignals import RepeatedStopSignals

    try:
        service = makeService(options.config)
    except ConfigError as e:
        # Endpoints are parsed here, once the reactor is installed: a bad
        # one stops twistd before it listens, as a bad key does.
        raise SystemExit("invalid configuration:\n" + str(e)) from None
    # twistd owns the process's signals; an embedding application keeps its own.
    RepeatedStopSignals(reactor).watch()
    return service
