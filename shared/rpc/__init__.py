"""The RPC port: call the database's RPCs as service_role, one interface, two adapters.

Import from the defining modules (no re-exports here):

    from shared.rpc.settings import RpcSettings, connect_rpc
    from shared.rpc.port import RpcPort
    from shared.rpc.errors import RpcError, RpcInvalidArgument, RpcUnavailable, …
"""
