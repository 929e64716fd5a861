"""The Kubernetes room: kubectl's requests through the tunnel, decided per request (issue 11).

- ``request.py``: pure, sans-I/O: method, path and query to the request's attributes (verb, API
  group, version, resource, subresource, namespace, name), as the API server's RequestInfoFactory
  reads them; paths the API server would read differently from us are refused;
- ``rules.py``: a scope's rules (the policy's ``kubernetes.scopes``, with the read, operate and
  admin presets) and the pure decision ``decide(rules, attributes)``;
- ``proxy.py``: sans-I/O HTTP (h11) between kubectl and the API server for one channel: checks
  each request head, rewrites it (the broker's credential, impersonation), relays the response,
  and hands over to the byte relay after a ``101`` (exec, attach, port-forward);
- ``channel.py``: the asyncio glue, a tunnel channel (``tunnel.protocol.BrokerChannel``) that
  runs ``proxy.KubeProxy`` and sends its audit records to the statement log.

``request``, ``rules`` and ``proxy`` import only ``access.shared`` and the standard library (and
h11); ``channel`` imports the tunnel and the audit rooms.
"""
