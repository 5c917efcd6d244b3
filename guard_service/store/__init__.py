"""Policy store: the shared source of truth for requests, versions, status and the audit log."""
