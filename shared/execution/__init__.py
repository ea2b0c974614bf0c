"""trading_execute's domain: the request path, the reconciler and what they share.

Import from the defining modules (no re-exports here):

    from shared.execution.settings import ExecuteSettings, load_execute_settings
    from shared.execution.runtime import Runtime
    from shared.execution.execute import execute
    from shared.execution.reconcile import reconcile
    from shared.execution.results import order_result, error_result
"""
