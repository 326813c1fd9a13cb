"""RFC 8599 push notifications: wake a sleeping mobile or browser client so that it registers
again and receives its call. `provider` is the contract every provider (APNs, FCM, Web Push)
implements; the registrar stores a binding's `PushTarget`, the proxy sends `PushRequest`s."""
