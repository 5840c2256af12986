from twisted.application.service import ServiceMaker

wslb = ServiceMaker(
    "wslb", "wslb.tap", "WebSocket load balancer for stateful workers", "wslb"
)
