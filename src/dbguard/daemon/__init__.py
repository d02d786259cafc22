"""dbguardd: the long-running daemon (server.py speaks the socket, service.py decides)."""
