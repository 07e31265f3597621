"""The property-based fuzz of every makima.v1 RPC (see tests/test_fuzz.py).

`rpcs` enumerates the methods from the generated descriptors and calls any of them generically,
`strategies` builds hypothesis strategies for any request message from its descriptor, `world` makes
the resources of the owner under test and of another owner whose every text carries a marker, and
`oracle` holds the properties: status codes, state digests read from the database and the
workspace, leak scans of every answer.
"""
