"""What the HTTP functions share that is not the domain: problem documents and step logs."""
