"""The HTTP edge both functions stand behind (edge), with what it is made of: bounded bodies
(body, deadlines), problem documents, step logs; and how they are served here (server)."""
