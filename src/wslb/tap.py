"""twistd's adapter: ``twistd wslb [--config FILE] [--set KEY=VALUE ...]``."""

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
        try:
            self.config = load_config(self["config"], overrides=self["set"])
        except ConfigError as e:
            raise usage.UsageError("invalid configuration:\n" + str(e)) from None
        if self.config.log.format == "json" and self.parent is not None:
            # twistd picks its log observer from its own options once they
            # are parsed: setting it here is how a subcommand chooses it.
            if not self.parent.get("logger"):
                self.parent["logger"] = "wslb.logs.json_stdout"


def makeService(options):
    from wslb.service import makeService

    return makeService(options.config)
