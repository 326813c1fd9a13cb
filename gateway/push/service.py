"""The gateway's push service: the providers its [push] configuration turns on, sending with
metrics, and the binding clean-up a dead token calls for.

Providers are built by PROVIDER_FACTORIES, one factory per `pn-provider` name: it returns None
when its keys are not configured.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram

from ..config import PushSettings
from ..location import Binding, LocationService
from .apns import NAME as APNS
from .apns import ApnsConfigError, ApnsProvider, load_signing_key
from .fcm import NAME as FCM
from .fcm import FcmProvider
from .provider import PushOutcome, PushProvider, PushRequest, PushResult, PushTarget
from .wakeup import WakeMetrics
from .webpush import NAME as WEBPUSH
from .webpush import WebPushProvider

log = logging.getLogger(f"ws2sip.{__name__}")
# The HTTP/2 stack logs every header at debug level, the APNs provider token included: never.
for _chatty in ("hpack", "h2", "httpcore", "httpx"):
    logging.getLogger(_chatty).setLevel(logging.WARNING)

ProviderFactory = Callable[[PushSettings, ssl.SSLContext], "PushProvider | None"]
# Seconds from a push to the device's REGISTER: apps woken by APNs/FCM take from some hundred
# milliseconds to several seconds.
WAKE_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 60.0)


def _apns(settings: PushSettings, verify: ssl.SSLContext) -> PushProvider | None:
    if not settings.apns_enabled:
        return None
    try:
        key = load_signing_key(settings.apns_key_file)
    except ApnsConfigError as error:
        raise SystemExit(f"ws2sip: {error}") from error  # as an unusable TLS key is
    return ApnsProvider(
        url=settings.apns_url, key=key,
        key_id=settings.apns_key_id, team_id=settings.apns_team_id, verify=verify,
        # No point delivering a wake-up after the call stopped waiting for it.
        expiration=max(1, round(settings.wait)),
    )


PROVIDER_FACTORIES: dict[str, ProviderFactory] = {
    APNS: _apns,
    FCM: FcmProvider.from_settings,
    WEBPUSH: WebPushProvider.from_settings,
}


def push_ssl_context(settings: PushSettings) -> ssl.SSLContext:
    """TLS toward the push services: the system's CAs, or only those of `ca_file`."""
    return ssl.create_default_context(cafile=settings.ca_file or None)


class PushMetrics(WakeMetrics):
    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.sent = Counter("ws2sip_pushes_sent", "push notifications the provider accepted",
                            ["provider"], registry=registry)
        self.failed = Counter("ws2sip_pushes_failed",
                              "push notifications refused or not delivered to the provider "
                              "(invalid tokens included)", ["provider"], registry=registry)
        self.invalid_tokens = Counter(
            "ws2sip_push_invalid_tokens",
            "push tokens the provider called invalid; the binding's push parameters were dropped",
            ["provider"], registry=registry)
        self.wake_time = Histogram(
            "ws2sip_push_wake_seconds", "time from the first push to the device's REGISTER",
            buckets=WAKE_BUCKETS, registry=registry)
        self.calls_lost = Counter(
            "ws2sip_push_calls_lost", "calls whose device did not register within push.wait",
            registry=registry)

    def register(self, registry: CollectorRegistry) -> None:
        """Serve these on `registry` too (built before the gateway's own registry exists)."""
        for collector in (self.sent, self.failed, self.invalid_tokens, self.wake_time,
                          self.calls_lost):
            registry.register(collector)

    def woken(self, seconds: float) -> None:
        self.wake_time.observe(seconds)

    def lost(self) -> None:
        self.calls_lost.inc()


class PushService:
    def __init__(
        self, settings: PushSettings, location: LocationService,
        registry: CollectorRegistry | None = None,
        factories: dict[str, ProviderFactory] | None = None,
    ) -> None:
        self.settings = settings
        self._location = location
        self.metrics = PushMetrics(registry)
        verify = push_ssl_context(settings)
        self.providers: dict[str, PushProvider] = {}
        for name, factory in (factories or PROVIDER_FACTORIES).items():
            provider = factory(settings, verify)
            if provider is not None:
                self.providers[name] = provider

    @property
    def names(self) -> frozenset[str]:
        """The pn-provider values this gateway can push through."""
        return frozenset(self.providers)

    @property
    def vapid_public_key(self) -> str:
        """The Web Push provider's +sip.vapid value; "" without Web Push."""
        provider = self.providers.get(WEBPUSH)
        return provider.vapid_public_key if isinstance(provider, WebPushProvider) else ""

    async def send(self, binding: Binding, request: PushRequest) -> PushResult:
        """Push `request` to the device of `binding`; a token the provider calls invalid is
        dropped from the binding (logged once: the binding no longer carries it)."""
        name = binding.pn_provider
        provider = self.providers.get(name)
        if provider is None:
            return PushResult(PushOutcome.FAILED, f"push provider {name!r} is not configured")
        target = PushTarget(name, binding.pn_prid, binding.pn_param)
        try:
            result = await provider.send(target, request)
        except Exception as error:  # a provider must not break the call that waits on it
            log.exception("push to %s via %s failed", binding.aor, name)
            result = PushResult(PushOutcome.FAILED, f"{type(error).__name__}: {error}")
        if result.outcome is PushOutcome.SENT:
            self.metrics.sent.labels(name).inc()
            log.debug("%s push for %s sent to %s via %s", request.kind.value, request.call_id,
                      binding.aor, name)
            return result
        self.metrics.failed.labels(name).inc()
        if result.outcome is PushOutcome.INVALID_TOKEN:
            self.metrics.invalid_tokens.labels(name).inc()
            if await self._location.forget_push(binding.aor, binding.pn_prid):
                log.warning("%s: %s called the push token of %s invalid (%s); its push "
                            "parameters are dropped", binding.aor, name, binding.contact,
                            result.reason)
        else:
            log.warning("%s push for %s to %s via %s failed: %s", request.kind.value,
                        request.call_id, binding.aor, name, result.reason)
        return result

    async def close(self) -> None:
        for provider in self.providers.values():
            await provider.close()
