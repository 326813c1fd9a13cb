"""Local stand-ins for the push services the gateway calls (APNs, FCM, Web Push push services).

They cannot be reached from the test machine, so each stand-in is an ASGI app that checks what
the real service checks (headers, the provider token's signature, payload shape) and answers
with its documented error codes. `server.serve_http2` runs one on loopback over TLS with
HTTP/2, the way the gateway's real HTTP/2 client meets the real service.
"""
